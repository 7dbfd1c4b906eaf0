"""Durations as people write and read them: ``500ms``, ``5s``, ``2min`` in; ``12 s``, ``3.5 h`` out.

A leaf: parameters, guard settings, the CLI and every display use it; it imports nothing of ours.
"""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|h)?\s*$", re.I)
_UNIT_S = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}


def parse_duration(value: Any, allow_zero: bool = False) -> float:
    """Seconds from a number (seconds) or text with a unit: ``500ms``, ``5s``, ``2min``, ``1h``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s or 500ms, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m[1]) * _UNIT_S[(m[2] or "s").lower()]
    else:
        raise ValueError(f"expected a duration such as 5s, 500ms or 2min, got {value!r}")
    if allow_zero and seconds == 0:
        return 0.0
    if not seconds > 0:
        raise ValueError("must be greater than zero (zero would mean wait forever)")
    return seconds


def human_seconds(seconds: float | None) -> str:
    """``0.4 s``, ``12 s``, ``12 min``, ``3.5 h``: how a DBA says an age."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""How a backfill batches and throttles (:class:`BackfillSettings`), read from run parameters.

The defaults, and why, are in :mod:`zdm_runbook.execute.backfill`'s module text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from zdm_runbook.core.errors import ParameterError, Problem
from zdm_runbook.execute.guard import read_settings


@dataclass(frozen=True)
class BackfillSettings:
    """Batch sizing, throttling and timeouts of a backfill (durations in seconds)."""

    target_batch: float = 0.2
    start_batch_size: int = 5000
    min_batch_size: int = 100
    max_batch_size: int = 20000
    pause: float = 0.0
    max_replay_lag: float = 30.0
    max_wal_mb_per_s: int = 0  # hold while the server writes WAL faster than this (0: no cap)
    lock_timeout: float = 1.0
    statement_timeout: float = 30.0
    busy_duty: float = 0.25  # the duty to start from when the app shares the server (1: no sharing)
    busy_max_duty: float = 0.5  # the most of the time batches may run while the app shares it
    max_app_slowdown: float = 1.5  # how much longer the app's requests may take while a batch runs
    busy_max_batch_size: int = 500
    max_failures: int = 10
    reconnect_attempts: int = 10
    log_every: float = 5.0


def backfill_settings(values: Mapping[str, Any] | None, path: str = "backfill") -> BackfillSettings:
    """Settings from parameters; :class:`ParameterError` names every bad field."""
    ranges = {
        "start_batch_size": (1, 1_000_000),
        "min_batch_size": (1, 1_000_000),
        "max_batch_size": (1, 1_000_000),
        "max_failures": (1, 1000),
        "reconnect_attempts": (0, 1000),
        "busy_max_batch_size": (1, 1_000_000),
        "max_wal_mb_per_s": (0, 100_000),
    }
    result, problems = read_settings(
        BackfillSettings(),
        values,
        path,
        ranges,
        frozenset({"pause"}),
        frozenset({"busy_duty", "busy_max_duty"}),
        frozenset({"max_app_slowdown"}),
    )
    if not problems and "start_batch_size" not in (values or {}):  # the default follows the bounds
        start = min(max(result.start_batch_size, result.min_batch_size), result.max_batch_size)
        result = replace(result, start_batch_size=start)
    if not problems and result.min_batch_size > result.max_batch_size:
        problems.append(Problem(f"{path}.min_batch_size", "must not exceed max_batch_size"))
    elif not problems and not result.min_batch_size <= result.start_batch_size <= result.max_batch_size:
        problems.append(
            Problem(f"{path}.start_batch_size", "must lie between min_batch_size and max_batch_size")
        )
    if not problems and result.lock_timeout >= result.statement_timeout:
        problems.append(Problem(f"{path}.lock_timeout", "must be shorter than statement_timeout"))
    if problems:
        raise ParameterError(problems)
    return result

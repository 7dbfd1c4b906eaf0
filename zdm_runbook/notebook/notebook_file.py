"""The notebook file of an interactive run: where it is, and what it held when it was signed off.

A headless run's archive is written by ``zdm run``; an interactive run's record is the notebook
the DBA ran. The kernel knows its path (jupyter_server starts each kernel with it); at sign-off
the ledger keeps the SHA-256 of the file as saved, which must be newer than the run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zdm_runbook.core.errors import ZdmError


def notebook_path(namespace: Mapping[str, Any]) -> Path | None:
    """The notebook this kernel runs, as the kernel knows it: jupyter_server gives every kernel it
    starts its notebook's path (``JPY_SESSION_NAME``, ``__session__``); VS Code has its own."""
    for found in (
        namespace.get("__session__"),
        namespace.get("__vsc_ipynb_file__"),
        os.environ.get("JPY_SESSION_NAME"),
    ):
        if isinstance(found, str) and found.endswith(".ipynb"):
            return Path(found).resolve()
    return None


def saved_notebook(path: Path, since: float) -> tuple[str, str]:
    """SHA-256 and save time (ISO, UTC) of the notebook file; :class:`ZdmError` when it cannot be read
    or was last saved before ``since`` (a Unix time): then it does not hold the run's outputs."""
    try:
        saved = path.stat().st_mtime
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ZdmError(f"cannot read the notebook {path} to record its hash: {exc.strerror}") from None
    if saved < since:
        raise ZdmError(
            "save the notebook first (Ctrl+S): the ledger keeps the SHA-256 of the saved file,"
            f" and {path.name} was last saved before this run started"
        )
    return digest, datetime.fromtimestamp(saved, UTC).isoformat(timespec="seconds")

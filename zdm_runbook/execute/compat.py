"""The compatibility check: the old and the new app's statements run against the schema as it is.

Every statement of the spec's ``compat:`` section (:mod:`zdm_runbook.spec.compat`) runs in its own
transaction that is rolled back, so the check leaves no trace; which versions must still work
after a phase is :data:`~zdm_runbook.spec.compat.MUST_WORK`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import psycopg

from zdm_runbook.core.connect import redact, set_timeouts
from zdm_runbook.core.errors import ZdmError
from zdm_runbook.spec.compat import MUST_WORK, Compat
from zdm_runbook.spec.model import Phase

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Result:
    """One statement's run: did it work, and did it have to."""

    version: str
    name: str
    required: bool
    ok: bool
    error: str = ""
    sqlstate: str = ""
    ms: float = 0.0


class CompatError(ZdmError):
    """An app version that must still work failed: the message names statement, version and error."""


def check(conn: Conn, compat: Compat, phase: Phase | str, timeout_s: float = 5.0) -> list[Result]:
    """Run every statement in its own rolled-back transaction; the phase decides who must work."""
    must = MUST_WORK[Phase(phase)]
    results = []
    for q in compat.queries:
        started = time.monotonic()
        try:
            with conn.transaction(force_rollback=True):
                set_timeouts(conn, timeout_s, timeout_s, local=True)
                conn.execute("SET LOCAL row_security = on")  # as the app runs: its policies filter
                cur = conn.execute(q.sql.encode(), q.params)  # trusted: the operator's own app SQL
                if cur.description:
                    cur.fetchall()
            ok, error, code = True, "", ""
        except psycopg.Error as exc:
            ok, error, code = False, redact(str(exc).strip().splitlines()[0]), exc.sqlstate or ""
        ms = round((time.monotonic() - started) * 1000, 1)
        results.append(Result(q.version, q.name, q.version in must, ok, error, code, ms))
    return results


def frame(results: list[Result]) -> pd.DataFrame:
    """One row per statement: version, name, outcome (ok / FAILED / retired, expected)."""
    rows = [
        {
            "version": f"{r.version} app ({'N-1' if r.version == 'old' else 'N'})",
            "statement": r.name,
            "outcome": "ok" if r.ok else ("FAILED" if r.required else "fails: retired, expected"),
            "ms": r.ms,
            "error": f"{r.sqlstate} {r.error}".strip(),
        }
        for r in results
    ]
    return pd.DataFrame(rows, columns=["version", "statement", "outcome", "ms", "error"])


def raise_failures(results: list[Result], when: str) -> None:
    """Raise :class:`CompatError` naming every required statement that failed."""
    bad = [r for r in results if r.required and not r.ok]
    if bad:
        lines = "\n".join(f"  - {r.version} app: {r.name}: [{r.sqlstate}] {r.error}" for r in bad)
        raise CompatError(
            f"{len(bad)} statement(s) of an app version that must still work failed {when}:\n{lines}\n"
            "The schema change is applied; the app that runs these statements would break. Fix forward"
            " (a new expand step) or roll the app back; do not sign this phase off."
        )

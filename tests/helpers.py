"""Shared test helpers: run a phase with the guarded executor, read the catalog.

The migrate phase's backfill runs as one whole-table UPDATE here (the stand-in for the batch
engine), which is fine for the small tables of the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from zdm_runbook.ddl import execute_phase
from zdm_runbook.plan import Plan
from zdm_runbook.spec import Phase
from zdm_runbook.steps import Step


def plain_backfill(dsn: str) -> Callable[[Step], None]:
    """Stand-in for the batch engine: the step's whole-table UPDATE in one transaction."""

    def run(step: Step) -> None:
        assert step.backfill is not None
        with psycopg.connect(dsn, autocommit=True) as c, c.transaction():
            c.execute(step.backfill.update())

    return run


def apply_phase(dsn: str, plan: Plan, phase: Phase | str) -> dict[str, str]:
    """Run one phase with the guarded executor; return ``{step key: 'applied' | 'skipped'}``."""
    results = execute_phase(plan, phase, dsn, backfill=plain_backfill(dsn))
    return {r.key: r.outcome for r in results}


def scalar(dsn: str, query: Any, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def columns(dsn: str, table: str) -> dict[str, tuple[str, bool]]:
    """``{column: (type, not null)}`` of a table, read from the catalog."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            [table],
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}

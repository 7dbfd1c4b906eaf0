"""Shared test helpers: run a phase with the guarded executor, read the catalog.

Phases run exactly as users run them: guarded DDL, and the backfill engine for migrate.
"""

from __future__ import annotations

from typing import Any

import psycopg

from zdm_runbook.ddl import execute_phase
from zdm_runbook.plan import Plan
from zdm_runbook.spec import Phase


def apply_phase(dsn: str, plan: Plan, phase: Phase | str) -> dict[str, str]:
    """Run one phase with the guarded executor; return ``{step key: 'applied' | 'skipped'}``."""
    results = execute_phase(plan, phase, dsn, on_batch=lambda state: None)
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

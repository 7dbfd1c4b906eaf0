"""Plain execution of a plan's steps, enough to prove the planner's SQL on a real server.

This is deliberately simple (no timeouts, no retries): guarded execution is the ddl module's job.
It still honours what a step says: its ``done_when`` guard, and no transaction for CONCURRENTLY.
"""

from __future__ import annotations

from typing import Any

import psycopg

from zdm_runbook.plan import Plan
from zdm_runbook.spec import Phase


def apply_phase(dsn: str, plan: Plan, phase: Phase | str) -> dict[str, str]:
    """Run one phase's steps in order; return ``{step key: 'applied' | 'skipped'}``."""
    outcome: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for step in plan.for_phase(phase):
            if step.done_when is not None:
                row = conn.execute(step.done_when).fetchone()
                if row and row[0]:
                    outcome[step.key] = "skipped"
                    continue
            if step.transactional:
                with conn.transaction():
                    for stmt in step.statements:
                        conn.execute(stmt)
            else:
                conn.execute(step.statements[0])
            outcome[step.key] = "applied"
    return outcome


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

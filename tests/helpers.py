"""Shared test helpers: run a phase with the guarded executor, read the catalog.

Phases run exactly as users run them: guarded DDL, and the backfill engine for migrate.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg

from zdm_runbook.ddl import execute_phase
from zdm_runbook.plan import Plan
from zdm_runbook.spec import Phase


def apply_phase(dsn: str, plan: Plan, phase: Phase | str) -> dict[str, str]:
    """Run one phase with the guarded executor; return ``{step key: 'applied' | 'skipped'}``."""
    results = execute_phase(plan, phase, dsn, on_batch=lambda state: None)
    return {r.key: r.outcome for r in results}


def zdm(
    *args: str, env: dict[str, str] | None = None, user: int | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """The ``zdm`` command as a user runs it: a real process, its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "zdm_runbook", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        user=user,
        check=False,
    )


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


_SCHEMA = """
SELECT coalesce(string_agg(x, E'\\n' ORDER BY x), '') FROM (
    SELECT format('column %s.%s.%s %s null=%s default=%s', table_schema, table_name, column_name,
                  data_type, is_nullable, column_default)
    FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'zdm')
    UNION ALL
    SELECT format('index %s', indexdef) FROM pg_indexes
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'zdm')
    UNION ALL
    SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(c.oid))
    FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'zdm')
    UNION ALL
    SELECT format('trigger %s %s', tgrelid::regclass, tgname) FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT format('function %s', p.oid::regprocedure) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'zdm')
) s(x)
"""


def fingerprint(dsn: str) -> str:
    """A digest of the schema (outside the ledger) and of every row of every user table."""
    import hashlib  # noqa: PLC0415

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_SCHEMA).fetchone()
        parts = [row[0] if row else ""]
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'zdm') ORDER BY 1"
        ).fetchall()
        for (table,) in tables:
            data = conn.execute(
                psycopg.sql.SQL(
                    "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
                ).format(psycopg.sql.SQL(table))
            ).fetchone()
            parts.append(f"{table} {data[0] if data else ''}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()

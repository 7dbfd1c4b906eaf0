"""Row-level security that would hide rows from the backfill: a no-go before it, and an error in it.

A backfill and its verification read and update the table as the role zdm connects as. Where
row-level security applies to that role (``ENABLE ROW LEVEL SECURITY`` and a role that is neither
the owner, a superuser nor ``BYPASSRLS``; or ``FORCE ROW LEVEL SECURITY`` and a role that is
not a superuser nor ``BYPASSRLS``), they see only the rows its policies show it. Measured on 15,
as the table's owner under ``FORCE`` with a per-tenant policy: migrate "succeeded", having
backfilled none of 4,000 rows and verified none, and contract would then have dropped the old
column. PostgreSQL's own answer, ``row_security_active(table)``, decides here, before anything
runs, from the first phase on.

The engine's own sessions (each phase's two, and the backfill's) also run with ``row_security = off``:
there PostgreSQL refuses a query that row-level security would filter (SQLSTATE 42501) rather than
filtering it, as ``pg_dump`` does, so a policy created after the preflight still cannot make a
backfill skip rows unseen. The compatibility checks run the app's statements with it on again,
as the app would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
import psycopg

from zdm_runbook.inspect.preflight import Reason
from zdm_runbook.plan.steps import BackfillSpec
from zdm_runbook.spec.model import Table

_ACTIVE = """
SELECT current_user::text, c.oid IS NOT NULL AND row_security_active(c.oid),
       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)
  FROM (SELECT to_regclass(format('%%I.%%I', %(schema)s::text, %(name)s::text)) AS oid) c
"""
COLUMNS = ("table", "role", "policies")


def hidden_rows(
    conn: psycopg.Connection[Any], backfills: Iterable[BackfillSpec]
) -> tuple[list[Reason], pd.DataFrame]:
    """A no-go per table the backfills still to run would see through row-level security."""
    reasons: list[Reason] = []
    rows: list[tuple[str, str, int]] = []
    for table in sorted({b.table for b in backfills}, key=str):
        row = conn.execute(_ACTIVE, {"schema": table.schema, "name": table.name}).fetchone()
        if row is None or not row[1]:
            continue
        role, _, policies = str(row[0]), row[1], int(row[2])
        rows.append((str(table), role, policies))
        reasons.append(Reason("no-go", _why(table, role, policies)))
    return reasons, pd.DataFrame(rows, columns=list(COLUMNS))


def _why(table: Table, role: str, policies: int) -> str:
    return (
        f"row-level security applies to {role} on {table} ({policies}"
        f" {'policy' if policies == 1 else 'policies'}): the backfill and its"
        " verification would see only the rows the policies show it, and leave the others unfilled"
        f" unseen. Run the change as a role with BYPASSRLS (ALTER ROLE {role} BYPASSRLS, for the"
        f" change), or as the table's owner with NO FORCE ROW LEVEL SECURITY on {table}"
    )

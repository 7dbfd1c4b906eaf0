"""The columns that hold a key a change widens, and stay narrower than it.

``change_key_type`` widens a key so that it can pass the int range. The foreign key columns that
hold its values (``orders.customer_id`` for ``customers.id``) have to follow: once the key passes
2,147,483,647, the app's first write of such a value there fails with ``integer out of range``.
They are widened by a ``change_key_type`` of their own, in the same change or a later one. The
preflight says which are left, as a warning: a later change may be the plan, so it is not a
refusal.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import psycopg
from psycopg import sql

from zdm_runbook.inspect.preflight import Reason
from zdm_runbook.spec.operations import ChangeKeyType, Operation
from zdm_runbook.spec.sqltext import regclass

# The one-column foreign keys that reference the key, whose column is smallint or integer.
_HOLDERS = sql.SQL("""
SELECT n.nspname, r.relname, a.attname, format_type(a.atttypid, NULL), c.conname
  FROM pg_constraint c
  JOIN pg_class r ON r.oid = c.conrelid
  JOIN pg_namespace n ON n.oid = r.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
 WHERE c.contype = 'f' AND c.conparentid = 0 AND c.confrelid = {table}
   AND cardinality(c.confkey) = 1 AND cardinality(c.conkey) = 1
   AND c.confkey[1] = (SELECT attnum FROM pg_attribute WHERE attrelid = {table} AND attname = {column})
   AND a.atttypid IN ('smallint'::regtype, 'integer'::regtype)
 ORDER BY 1, 2, 3
""")
_LIMITS = {"smallint": "32,767", "integer": "2,147,483,647"}


def narrow_holders(
    conn: psycopg.Connection[Any], operations: tuple[Operation, ...]
) -> tuple[list[Reason], pd.DataFrame]:
    """A warning per foreign key column that holds a key this change widens, is narrower, and is
    not widened by this change too; and the table of them, for display."""
    keys = [op for op in operations if isinstance(op, ChangeKeyType)]
    widened = {(op.table.schema, op.table.name, op.column) for op in keys}
    reasons, rows = [], []
    for op in keys:
        found = conn.execute(
            _HOLDERS.format(table=regclass(op.table.schema, op.table.name), column=sql.Literal(op.column))
        ).fetchall()
        for schema, name, column, type_, fk in found:
            if (schema, name, column) in widened:
                continue
            holder = f"{schema}.{name}.{column}"
            rows.append((holder, type_, fk, f"{op.table}.{op.column}"))
            reasons.append(
                Reason(
                    "warn",
                    f"{holder} ({type_}) holds {op.table}.{op.column}, which this change widens to"
                    f" {op.type.text}, and stays {type_}: once the key passes {_LIMITS.get(type_, type_)},"
                    f" the app's writes of it there fail (integer out of range). Widen it in this change"
                    f" or a later one: change_key_type: {{table: {schema}.{name}, column: {column}}}",
                )
            )
    return reasons, pd.DataFrame(rows, columns=["column", "type", "foreign key", "holds"])

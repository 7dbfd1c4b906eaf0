"""The columns that hold a key a change widens, and stay narrower than it.

``change_key_type`` widens a key so that it can pass the int range. The foreign key columns that
hold its values (``orders.customer_id`` for ``customers.id``) have to follow: once the key passes
2,147,483,647, the app's first write of such a value there fails with ``integer out of range``.
They are widened by a ``change_key_type`` of their own, in the same change or a later one. The
preflight says which are left, as a warning: a later change may be the plan, so it is not a
refusal.

The other way to lose a key's hold: ``change_type`` and ``rename_column`` move a column's values
to a new column, and contract drops the old one, with its foreign key. Unless the spec adds the
foreign key on the new column, the preflight warns of that too, from the first phase on, not only
when contract is about to drop it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import psycopg
from psycopg import sql

from zdm_runbook.inspect.preflight import Reason
from zdm_runbook.plan.steps import derived_name
from zdm_runbook.spec.operations import AddForeignKey, ChangeKeyType, ChangeType, Operation, RenameColumn
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
# The one-column foreign keys of a column: name, the table and column they reference.
_OWN = sql.SQL("""
SELECT c.conname, c.confrelid::regclass::text, r.attname,
       (ARRAY['no action', 'restrict', 'cascade', 'set null', 'set default'])[strpos('arcnd', c.confdeltype)]
  FROM pg_constraint c
  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
  JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = c.confkey[1]
 WHERE c.contype = 'f' AND c.conparentid = 0 AND c.conrelid = {table} AND cardinality(c.conkey) = 1
   AND a.attname = {column} AND NOT a.attisdropped
 ORDER BY 1
""")


def hold_warnings(
    conn: psycopg.Connection[Any], operations: tuple[Operation, ...]
) -> tuple[list[Reason], pd.DataFrame]:
    """A warning per foreign key column that holds a key this change widens, is narrower, and is
    not widened by this change too, and per foreign key a replaced column leaves behind; and the
    table of them, for display."""
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
    lost, lost_rows = _foreign_keys_left_behind(conn, operations)
    return reasons + lost, pd.DataFrame(rows + lost_rows, columns=["column", "type", "foreign key", "holds"])


def _foreign_keys_left_behind(
    conn: psycopg.Connection[Any], operations: tuple[Operation, ...]
) -> tuple[list[Reason], list[tuple[str, str, str, str]]]:
    """A warning per foreign key of a column that ``change_type`` or ``rename_column`` replaces,
    when the spec does not add it on the new column: contract drops it with the old one."""
    reasons, rows = [], []
    for op in operations:
        if isinstance(op, ChangeType):
            old, new = op.column, op.new_column
        elif isinstance(op, RenameColumn):
            old, new = op.old, op.new
        else:
            continue
        if any(isinstance(o, AddForeignKey) and o.table == op.table and new in o.columns for o in operations):
            continue
        table = regclass(op.table.schema, op.table.name)
        for name, ref, ref_column, on_delete in conn.execute(
            _OWN.format(table=table, column=sql.Literal(old))
        ):
            rows.append((f"{op.table}.{old}", "", name, f"{ref}.{ref_column}"))
            twin = derived_name(op.table.name, new, suffix="fkey")
            reasons.append(
                Reason(
                    "warn",
                    f"{op.table}.{old} has foreign key {name} (to {ref}.{ref_column}): {op.NAME}'s new"
                    f" column {new} gets none, and contract drops it with {old}. Add it on {new} in"
                    f" this spec: add_foreign_key: {{table: {op.table}, name: {twin},"
                    f" columns: [{new}], references: {{table: {ref}, columns: [{ref_column}]}},"
                    f" on_delete: {on_delete}}}",
                )
            )
    return reasons, rows

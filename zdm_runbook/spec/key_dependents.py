"""What else uses a key that ``change_key_type`` widens, and would be lost or left behind by it.

The swap moves the key's own constraint, its sequence or identity, and every one-column foreign
key that references it or goes from it (a foreign key column), to the bigint column, which then
takes the key's name. Everything else that uses the key column follows the column, not the name:
PostgreSQL binds it by attribute number. After the swap it still uses the old int column, which
reads NULL past the int range, and contract drops that column, which silently takes an index or a
constraint on it along (measured on 18.6: an index on ``(name, id)`` and one on ``(id % 10)`` were
gone after contract), or fails on a view. Every index is twinned by switch itself and given back
its name by the swap (:mod:`zdm_runbook.plan.index_twins`), or by the spec. For everything else the
catalog check refuses the change while it exists, naming each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.core.errors import Problem
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.operations import ChangeKeyType, CreateIndex, Operation
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL

# Every object that depends on the key column, less what the swap moves or the recipe owns: the
# key constraint and its index, the column's own default and sequence, PostgreSQL 18's named NOT
# NULL, one-column foreign keys that reference the key (twinned), and the dual-write's triggers.
_DEPENDENTS = Q("""
WITH k AS (SELECT a.attrelid AS rel, a.attnum FROM pg_attribute a
            WHERE a.attrelid = {table} AND a.attname = {column} AND NOT a.attisdropped),
key AS (SELECT c.oid, c.conindid FROM pg_constraint c, k  -- the one the swap moves
         WHERE c.conrelid = k.rel AND c.contype IN ('p', 'u') AND c.conkey = ARRAY[k.attnum]
         ORDER BY c.contype, c.conname LIMIT 1)
SELECT DISTINCT CASE WHEN d.classid = 'pg_rewrite'::regclass  -- a view's rule: name the view
         THEN pg_describe_object('pg_class'::regclass,
                                 (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid), 0)
         ELSE pg_describe_object(d.classid, d.objid, 0) END AS what,
       CASE WHEN d.classid = 'pg_class'::regclass THEN d.objid::regclass::text END AS index
  FROM pg_depend d, k
 WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = k.rel AND d.refobjsubid = k.attnum
   AND d.deptype IN ('n', 'a')
   AND NOT (d.classid = 'pg_class'::regclass AND (d.objid IN (SELECT conindid FROM key)
            OR (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'S'))
   AND NOT (d.classid = 'pg_constraint'::regclass AND d.objid IN (
            SELECT c.oid FROM pg_constraint c WHERE c.oid IN (SELECT oid FROM key)
               OR (c.contype = 'n' AND c.conrelid = k.rel)
               OR (c.contype = 'f' AND c.confrelid = k.rel AND c.confkey = ARRAY[k.attnum])
               OR (c.contype = 'f' AND c.conrelid = k.rel AND c.conkey = ARRAY[k.attnum])))
   AND NOT (d.classid = 'pg_attrdef'::regclass
            AND d.objid IN (SELECT oid FROM pg_attrdef WHERE adrelid = k.rel AND adnum = k.attnum))
   AND NOT (d.classid = 'pg_trigger'::regclass
            AND d.objid IN (SELECT oid FROM pg_trigger WHERE tgname LIKE 'zdm\\_%%'))
 ORDER BY 1
""")


@dataclass(frozen=True)
class Dependent:
    """One object that uses the key column: how PostgreSQL names it, and for an index its name."""

    what: str
    index: str | None


def dependents(conn: psycopg.Connection[Any], table: Table, column: str) -> list[Dependent]:
    """The objects that use ``table.column`` and that the swap would leave on the old column."""
    rows = conn.execute(
        _DEPENDENTS.format(table=regclass(table.schema, table.name), column=sql.Literal(column))
    ).fetchall()
    return [Dependent(str(r[0]), r[1]) for r in rows]


def spec_twins_others(op: ChangeKeyType, operations: tuple[Operation, ...]) -> bool:
    """Whether the spec twins an expression or partial index of the table on the new column itself
    (a ``create_index`` whose expression or predicate names it): then switch leaves every
    expression and partial index on the key to the spec, as before it twinned them itself."""
    for other in operations:
        if isinstance(other, CreateIndex) and other.table == op.table:
            for expr in (other.expression, other.where):
                if expr is not None and op.new_column in expr.columns:
                    return True
    return False


def check_key_dependents(
    conn: psycopg.Connection[Any],
    op: ChangeKeyType,
    operations: tuple[Operation, ...],
    path: str,
    problems: list[Problem],
) -> None:
    """A problem per object that uses the key and that neither switch nor the spec takes care of:
    every index is twinned (by switch, or by the spec), so what is left is a view, a check, a
    trigger, a generated column or a second key."""
    for dep in dependents(conn, op.table, op.column):
        if dep.index is not None:
            continue  # switch twins it (plan/index_twins.py), or the spec does
        problems.append(
            Problem(
                f"{path}.column",
                f"{op.table}.{op.column} is used by {dep.what}: after the swap it would stay on the old"
                f" column ({op.new_column}), whose values read NULL past its range, and contract drops"
                " that column (or fails on it); drop it before the change and create it again after"
                " switch",
            )
        )

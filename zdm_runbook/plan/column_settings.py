"""A column's own settings carried to the column that takes its place: its comment, its statistics
target and its options (``n_distinct``).

A DBA sets ``ALTER COLUMN … SET STATISTICS 1000`` or ``SET (n_distinct = …)`` on a skewed column
so that the planner keeps a good plan, and documents a column with ``COMMENT ON COLUMN``. A new
column has none of them, and contract drops the old one with its settings: the planner falls back
to defaults on the column the new app reads. So ``rename_column`` and ``change_type`` give the new
column the old one's when expand adds it, in the same transaction (each takes SHARE UPDATE
EXCLUSIVE at most, under the ADD COLUMN's ACCESS EXCLUSIVE). PostgreSQL 15 says "no target" with
-1, 17 on with NULL; both are left alone.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL

# In a DO block where {table} is the table (a regclass) and {source}, {target} the two columns'
# names. A block of its own.
_CARRY = """DECLARE
    a record;
  BEGIN
    SELECT col_description(attrelid, attnum) AS comment, attstattarget::int AS target,
           array_to_string(attoptions, ', ') AS options
      INTO a FROM pg_attribute WHERE attrelid = {table} AND attname = {source} AND NOT attisdropped;
    IF a.comment IS NOT NULL THEN
      EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', {table}, {target}, a.comment);
    END IF;
    IF a.target >= 0 THEN
      EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS %s', {table}, {target}, a.target);
    END IF;
    IF a.options IS NOT NULL THEN
      EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET (%s)', {table}, {target}, a.options);
    END IF;
  END;"""


def carry_fragment(table: sql.Composable, source: sql.Composable, target: sql.Composable) -> sql.Composed:
    """The carry as a nested block, for a DO block that names the table and columns itself."""
    return Q(_CARRY).format(table=table, source=source, target=target)


def carry_column_settings(table: Table, source: str, target: str) -> sql.Composed:
    """A DO statement: ``target`` gets ``source``'s comment, statistics target and options."""
    block = carry_fragment(regclass(table.schema, table.name), sql.Literal(source), sql.Literal(target))
    return Q("DO $zdm_settings$\nBEGIN\n  {}\nEND\n$zdm_settings$").format(block)

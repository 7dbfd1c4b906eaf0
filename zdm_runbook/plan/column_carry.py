"""What a column carries to the column that takes its place: its column privileges, and its own
settings (comment, statistics target, options such as ``n_distinct``).

Privileges: a role may hold privileges on some columns of a table only (``GRANT SELECT (id,
customer_id) ON orders TO app``). A new column has none: measured, after ``change_key_type``'s swap
the old app's role met ``permission denied for table orders`` on its very next statement, since the
name ``customer_id`` then means the new column. So the new column gets, for every grantee, the
privileges the old one has, with their grant option. GRANT is idempotent, and a column with no
column privileges (the common case, privileges on the whole table) has nothing to carry.

Settings: a DBA sets ``ALTER COLUMN … SET STATISTICS 1000`` or ``SET (n_distinct = …)`` on a skewed
column so that the planner keeps a good plan, and documents a column with ``COMMENT ON COLUMN``. A
new column has none of them, and contract drops the old one with its settings: the planner falls
back to defaults on the column the new app reads. PostgreSQL 15 says "no target" with -1, 17 on
with NULL; both are left alone.

When: ``rename_column`` and ``change_type`` carry both when expand adds the new column (the new app
reads it from switch on; each statement takes SHARE UPDATE EXCLUSIVE at most, under the ADD
COLUMN's ACCESS EXCLUSIVE, measured on 15 and 18), and the privileges again in contract's drop, so
that one granted since expand is not lost; ``change_key_type`` carries both inside the swap, under
the lock it already holds.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL

# Each in a DO block where {table} is the table (a regclass) and {source}, {target} the two
# columns' names; each a block of its own. One GRANT per privilege a grantee holds on the source:
_GRANTS = """DECLARE
    g record;
  BEGIN
    FOR g IN SELECT e.privilege_type, e.grantee, e.is_grantable
        FROM pg_attribute a, aclexplode(a.attacl) e
       WHERE a.attrelid = {table} AND a.attname = {source} AND a.attacl IS NOT NULL
       ORDER BY e.grantee, e.privilege_type LOOP
      EXECUTE format('GRANT %s (%I) ON %s TO %s%s', g.privilege_type, {target}, {table},
        CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
        CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
  END;"""
# The source's comment, statistics target and options:
_SETTINGS = """DECLARE
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


def carry_fragment(
    table: sql.Composable, source: sql.Composable, target: sql.Composable, settings: bool = True
) -> sql.Composed:
    """The carry as nested blocks, for a DO block that names the table and columns itself: the
    privileges, and (``settings``) the comment, statistics target and options."""
    blocks = [_GRANTS, _SETTINGS] if settings else [_GRANTS]
    return Q("\n  ").join(Q(b).format(table=table, source=source, target=target) for b in blocks)


def carry_column(table: Table, source: str, target: str, settings: bool = True) -> sql.Composed:
    """A DO statement: ``target`` gets every column privilege ``source`` has and (``settings``) its
    comment, statistics target and options."""
    block = carry_fragment(
        regclass(table.schema, table.name), sql.Literal(source), sql.Literal(target), settings
    )
    return Q("DO $zdm_carry$\nBEGIN\n  {}\nEND\n$zdm_carry$").format(block)

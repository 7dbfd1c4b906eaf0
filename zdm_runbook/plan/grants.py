"""Column privileges carried from a column to the one that takes its place.

A role may hold privileges on some columns of a table only (``GRANT SELECT (id, customer_id) ON
orders TO app``). A new column has none: measured, after ``change_key_type``'s swap the old app's
role met ``permission denied for table orders`` on its very next statement, since the name
``customer_id`` then means the new column. So the new column gets, for every grantee, the
privileges the old one has, with their grant option: for ``rename_column`` and ``change_type``
when expand adds it (the new app reads it from switch on), and for ``change_key_type`` inside the
swap, under the lock it already holds (the grants the column has then). GRANT is idempotent, and a
column with no column privileges (the common case, privileges on the whole table) has nothing to
carry.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL

# In a DO block where {table} is the table (a regclass) and {source}, {target} the two columns'
# names: one GRANT per privilege a grantee holds on the source column. A block of its own.
_CARRY = """DECLARE
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


def carry_fragment(table: sql.Composable, source: sql.Composable, target: sql.Composable) -> sql.Composed:
    """The carry as a nested block, for a DO block that names the table and columns itself."""
    return Q(_CARRY).format(table=table, source=source, target=target)


def carry_column_grants(table: Table, source: str, target: str) -> sql.Composed:
    """A DO statement: ``target`` gets every column privilege ``source`` has."""
    block = carry_fragment(regclass(table.schema, table.name), sql.Literal(source), sql.Literal(target))
    return Q("DO $zdm_grants$\nBEGIN\n  {}\nEND\n$zdm_grants$").format(block)

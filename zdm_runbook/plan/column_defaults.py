"""The old column's default carried to the column that takes its place, in contract.

Measured on 15 and 18: after ``rename_column`` of ``status text NOT NULL DEFAULT 'new'`` the new
app's ``INSERT`` that leaves the column out met ``null value in column "state" … violates not-null
constraint`` right after contract, and ``change_type``'s new column read NULL where the old one
read its default. Until contract the dual-write trigger copies the old column's default into the
new one, so nothing shows before.

The default is set in contract's drop step, in the same transaction as the ``DROP COLUMN``, and
not earlier: while the old app still writes, a default on the new column would fill it on the old
app's INSERTs, and the trigger copies the old value into the new column only when the new one is
NULL, so the two would part. A default the new column already has (set by the spec or by hand) is
kept. A column that owns a sequence or is an identity is a key the catalog check sends to
``change_key_type``; a default that calls a sequence it does not own is carried as written.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import SqlType, regclass

Q = sql.SQL

# In a DO block where {table} is the table (a regclass), {old} and {new} the columns' names and
# {template} the format() template of the new default, in which %s is the old default's text.
_CARRY = """DO $zdm_default$
DECLARE
  d text;
BEGIN
  IF NOT EXISTS (SELECT FROM pg_attrdef ad
                   JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
                  WHERE ad.adrelid = {table} AND a.attname = {new}) THEN
    SELECT pg_get_expr(ad.adbin, ad.adrelid) INTO d
      FROM pg_attrdef ad JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
     WHERE ad.adrelid = {table} AND a.attname = {old} AND a.attgenerated = '';
    IF d IS NOT NULL THEN
      EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT ' || {template}, {table}, {new}, d);
    END IF;
  END IF;
END
$zdm_default$"""


def carry_default(table: Table, old: str, new: str, cast_to: SqlType | None = None) -> sql.Composed:
    """A DO statement: ``new`` gets ``old``'s default (cast to ``cast_to``, if given) unless it has
    one."""
    template = "%s" if cast_to is None else f"(%s)::{cast_to.text}"
    return Q(_CARRY).format(
        table=regclass(table.schema, table.name),
        old=sql.Literal(old),
        new=sql.Literal(new),
        template=sql.Literal(template),
    )

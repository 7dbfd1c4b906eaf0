"""What uses a column, split by what ``DROP COLUMN`` does to it.

Measured on 15.18 and 18.6 (``ALTER TABLE t DROP COLUMN a`` after each object alone): PostgreSQL
drops silently, with the column, every object that depends on it *automatically* (``pg_depend``'s
``a``): an index on it (in its columns, an expression or its predicate), a check, unique,
exclusion or foreign key constraint of its table, an extended statistics object. It refuses the
drop (``DependentObjectsStillExist``) while an object depends on it *normally* (``n``): a view or
materialized view, a policy, a trigger (``UPDATE OF a``, or ``WHEN`` on it), a rule, a generated
column, a function with an SQL-standard body, another table's foreign key through a unique
constraint on it. The column's own default, its NOT NULL constraint (18), a sequence it owns and
the dual-write's ``zdm_`` triggers are left out: the recipes take care of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

_USES = sql.SQL("""
WITH d AS (  -- one row per object; an object that also depends automatically goes with the column
  SELECT d.classid, d.objid, d.refobjid, NOT bool_or(d.deptype = 'a') AS breaks_drop, min(a.attnum) AS attnum
    FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
   WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = {table} AND a.attname = {column}
     AND NOT a.attisdropped AND d.deptype IN ('n', 'a')
   GROUP BY d.classid, d.objid, d.refobjid)
SELECT d.breaks_drop,
       CASE WHEN d.classid = 'pg_class'::regclass THEN 'index'
            WHEN d.classid = 'pg_constraint'::regclass THEN 'constraint'
            ELSE 'other' END AS kind,
       CASE WHEN d.classid = 'pg_class'::regclass THEN (SELECT relname FROM pg_class WHERE oid = d.objid)
            WHEN d.classid = 'pg_constraint'::regclass THEN co.conname
            WHEN d.classid = 'pg_rewrite'::regclass AND rw.ev_class <> d.refobjid
              THEN (SELECT relname FROM pg_class WHERE oid = rw.ev_class)  -- the view
            WHEN d.classid = 'pg_rewrite'::regclass THEN rw.rulename
            WHEN d.classid = 'pg_policy'::regclass THEN (SELECT polname FROM pg_policy WHERE oid = d.objid)
            WHEN d.classid = 'pg_trigger'::regclass THEN (SELECT tgname FROM pg_trigger WHERE oid = d.objid)
            WHEN d.classid = 'pg_proc'::regclass THEN (SELECT proname FROM pg_proc WHERE oid = d.objid)
            END::text AS name,
       CASE WHEN d.classid = 'pg_rewrite'::regclass AND rw.ev_class <> d.refobjid
              THEN pg_describe_object('pg_class'::regclass, rw.ev_class, 0)
            WHEN d.classid = 'pg_attrdef'::regclass THEN format('generated column %I', ga.attname)
            WHEN d.classid = 'pg_constraint'::regclass AND co.conrelid <> d.refobjid
              THEN format('foreign key %I of %s', co.conname, co.conrelid::regclass)
            ELSE pg_describe_object(d.classid, d.objid, 0) END AS what,
       CASE WHEN d.classid = 'pg_class'::regclass THEN pg_get_indexdef(d.objid)
            WHEN d.classid = 'pg_constraint'::regclass THEN pg_get_constraintdef(co.oid) END AS definition,
       coalesce(co.contype = 'f' AND co.conrelid = d.refobjid AND cardinality(co.conkey) = 1, false)
         AS own_foreign_key
  FROM d
  LEFT JOIN pg_rewrite rw ON d.classid = 'pg_rewrite'::regclass AND rw.oid = d.objid
  LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
  LEFT JOIN pg_attribute ga ON ga.attrelid = ad.adrelid AND ga.attnum = ad.adnum
  LEFT JOIN pg_constraint co ON d.classid = 'pg_constraint'::regclass AND co.oid = d.objid
 WHERE NOT (d.classid = 'pg_attrdef'::regclass AND ad.adnum = d.attnum)
   AND NOT coalesce(co.contype = 'n', false)
   AND NOT (d.classid = 'pg_trigger'::regclass
            AND (SELECT tgname FROM pg_trigger WHERE oid = d.objid) LIKE 'zdm\\_%%')
   AND NOT (d.classid = 'pg_class'::regclass AND (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'S')
 ORDER BY 1 DESC, 4
""")


@dataclass(frozen=True)
class Use:
    """One object that uses the column: ``breaks_drop`` if DROP COLUMN fails while it exists
    (else the drop takes it along); ``kind`` ``index``, ``constraint`` or ``other``; ``name``, its
    own name (a view's, a policy's, a trigger's...; None for a generated column or statistics);
    ``what`` as PostgreSQL describes it; ``definition`` for an index or
    a constraint; ``own_foreign_key``: the column's own one-column foreign key."""

    breaks_drop: bool
    kind: str
    name: str | None
    what: str
    definition: str | None
    own_foreign_key: bool


def column_uses(conn: psycopg.Connection[Any], table: sql.Composable, column: str) -> list[Use]:
    """What uses ``column`` of ``table`` (a regclass expression); empty if either is not there."""
    rows = conn.execute(_USES.format(table=table, column=sql.Literal(column))).fetchall()
    return [Use(bool(r[0]), str(r[1]), r[2], str(r[3]), r[4], bool(r[5])) for r in rows]

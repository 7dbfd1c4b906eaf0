"""The indexes on a column that ``change_key_type`` widens: twinned on the new column before the
swap, and given back their names by it.

PostgreSQL binds an index to the column's number, not its name: after the swap an index on
``orders.customer_id`` would stay on the old int column, serve no query that names
``customer_id``, and go with that column at contract (measured: the catalog check refused such a
change until the spec twinned each index itself). So switch builds, CONCURRENTLY, a twin of each
index that uses the column, in its columns, an expression or its predicate
(``WHERE deleted_at IS NULL``): the original's definition with the new column for the old one
(:mod:`zdm_runbook.execute.index_twins`). Which indexes is read from the catalog when switch runs.
The swap then drops each original, on the old column, under the lock it already holds, and
renames the twin to the original's name: after the change the table has the indexes it had,
under their names, on the bigint column.

An index that the spec twins itself is left to the spec: a ``create_index`` that is the same plain
index on the new column, and, where the spec twins an expression or partial index of the table on
the new column, every expression and partial index (as before switch twinned them). An index
behind a constraint is refused by the catalog check (:mod:`zdm_runbook.spec.key_dependents`).
"""

from __future__ import annotations

import hashlib

from psycopg import sql

from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL


def twin_name(name: str) -> str:
    """The twin's name: the original's, within 63 bytes, and distinct for originals that share
    their first 50 characters (as :data:`TWIN_OF` computes it in SQL)."""
    return f"{name[:50]}_zdm_{hashlib.md5(name.encode()).hexdigest()[:8]}"  # noqa: S324 - a name, not a secret


TWIN_OF = "left({a}, 50) || '_zdm_' || left(md5({a}), 8)"

# The same index on the new column (attribute natt for katt), by structure: the spec's twin or ours.
_SAME_ON_NEW = """EXISTS (SELECT 1 FROM pg_index t JOIN pg_class tc ON tc.oid = t.indexrelid
      WHERE t.indrelid = i.indrelid AND t.indkey::int2[] = array_replace(i.indkey::int2[], katt, natt)
        AND t.indexprs IS NULL AND t.indpred IS NULL AND t.indisunique = i.indisunique
        AND t.indnkeyatts = i.indnkeyatts AND t.indoption::int2[] = i.indoption::int2[]
        AND tc.relam = c.relam AND t.indisvalid)"""

# The indexes that use the column (attribute katt of table p: in their columns, an expression or
# the predicate) and that no constraint owns; each with whether its twin is there (a plain one's
# by structure, the spec's or ours; any other's by name, ours). {others}: whether to twin those.
_INDEXES = """
WITH a AS (SELECT {p}::oid AS p,
    (SELECT attnum FROM pg_attribute WHERE attrelid = {p} AND attname = {k}) AS katt,
    (SELECT attnum FROM pg_attribute WHERE attrelid = {p} AND attname = {n}) AS natt)
SELECT c.relname::text AS name,
       CASE WHEN i.indexprs IS NULL AND i.indpred IS NULL THEN {same}
         ELSE EXISTS (SELECT 1 FROM pg_index t JOIN pg_class tc ON tc.oid = t.indexrelid
           WHERE t.indrelid = a.p AND tc.relname = {twin_of} AND t.indisvalid) END AS twinned,
       pg_get_indexdef(i.indexrelid) AS definition,  -- which leaves out the tablespace:
       (SELECT spcname::text FROM pg_tablespace WHERE oid = c.reltablespace) AS space
  FROM a, pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = a.p AND {uses}
   AND ((i.indexprs IS NULL AND i.indpred IS NULL) OR {others})
   AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid)
 ORDER BY 1"""

# Whether index i uses column katt of its table: in its columns, or (pg_depend) an expression or
# its predicate.
_USES = """(katt = ANY ({i}.indkey::int2[]) OR EXISTS (SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = {i}.indexrelid
        AND d.refclassid = 'pg_class'::regclass AND d.refobjid = {i}.indrelid AND d.refobjsubid = katt))"""


def column_indexes(table: Table, key: str, shadow: str, left_to_spec: bool = False) -> sql.Composed:
    """The query (name, twinned, definition, tablespace) of the indexes on ``key``; shown as the
    step's SQL. With
    ``left_to_spec``, the expression and partial ones are the spec's to twin, and left out."""
    return Q(_INDEXES).format(
        p=regclass(table.schema, table.name),
        k=sql.Literal(key),
        n=sql.Literal(shadow),
        same=Q(_SAME_ON_NEW),
        twin_of=Q(TWIN_OF.format(a="c.relname")),
        uses=Q(_USES.format(i="i").replace("katt", "a.katt")),
        others=Q("false" if left_to_spec else "true"),
    )


def all_twinned(table: Table, key: str, shadow: str, left_to_spec: bool = False) -> sql.Composed:
    """True when every index on ``key`` has its twin on ``shadow`` (built, valid)."""
    return Q("SELECT coalesce(bool_and(twinned), true) FROM ({}) q").format(
        column_indexes(table, key, shadow, left_to_spec)
    )


# In the swap's DO block, a block of its own: each of our twins replaces its original (on the old
# column now).
_SWAP = """DECLARE
    ix record;
    part record;
    parts oid[];
    part_names text[];
  BEGIN
  FOR ix IN SELECT o.indexrelid::regclass AS old, oc.relname AS name,
        t.indexrelid::regclass AS twin
      FROM pg_index o JOIN pg_class oc ON oc.oid = o.indexrelid
      JOIN pg_class tc ON tc.relnamespace = oc.relnamespace AND tc.relname = {twin_of}
      JOIN pg_index t ON t.indexrelid = tc.oid AND t.indrelid = p AND t.indisvalid
     WHERE o.indrelid = p AND {uses}
       AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = o.indexrelid) LOOP
    -- On a partitioned table, each partition's index of the twin takes its original's name too.
    SELECT array_agg(x.indrelid), array_agg(pc.relname::text) INTO parts, part_names
      FROM pg_partition_tree(ix.old) pt JOIN pg_index x ON x.indexrelid = pt.relid
      JOIN pg_class pc ON pc.oid = pt.relid WHERE pt.level > 0;
    EXECUTE format('DROP INDEX %s', ix.old);
    EXECUTE format('ALTER INDEX %s RENAME TO %I', ix.twin, ix.name);
    FOR part IN SELECT pt.relid::regclass AS twin, o.name FROM pg_partition_tree(ix.twin) pt
        JOIN pg_index x ON x.indexrelid = pt.relid
        JOIN unnest(parts, part_names) o(rel, name) ON o.rel = x.indrelid WHERE pt.level > 0 LOOP
      EXECUTE format('ALTER INDEX %s RENAME TO %I', part.twin, part.name);
    END LOOP;
  END LOOP;
  END;"""
SWAP_FRAGMENT = Q(_SWAP).format(twin_of=Q(TWIN_OF.format(a="oc.relname")), uses=Q(_USES.format(i="o")))

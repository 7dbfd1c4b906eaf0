"""The twins of the plain indexes on a column that ``change_key_type`` widens, one build each.

The step is planned without the catalog; which indexes use the column, and how each is made, is
read when switch runs (see :mod:`zdm_runbook.plan.index_twins` for why). Each twin is a step of
its own (keyed ``<step>:<twin>``), built CONCURRENTLY, guarded, retried and recorded like any
other index build, and idempotent: a re-run skips a twin that is built and valid, and an index the
spec twins itself is not twinned again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.execute.partitions import partition_steps
from zdm_runbook.plan import steps as s
from zdm_runbook.plan.index_twins import plain_indexes, twin_name
from zdm_runbook.plan.steps import IndexSpec, Step
from zdm_runbook.spec.model import Table

Q = sql.SQL
Conn = psycopg.Connection[Any]

# How an index is made, column by column: key columns with their collation (where it differs from
# the column's), operator class (where it is not the type's default) and order; then INCLUDE ones;
# and on every row its method, uniqueness, storage parameters and tablespace.
_SHAPE = """
SELECT u.ord <= i.indnkeyatts AS is_key, a.attname::text,
       CASE WHEN NOT oc.opcdefault THEN ocn.nspname::text END, oc.opcname::text,
       CASE WHEN u.coll <> 0 AND u.coll <> a.attcollation THEN con.nspname::text END, co.collname::text,
       coalesce(u.opt, 0), am.amname::text, i.indisunique, c.reloptions,
       (SELECT spcname::text FROM pg_tablespace WHERE oid = c.reltablespace)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
  CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[], i.indcollation::oid[], i.indoption::int2[])
         WITH ORDINALITY u(attnum, cls, coll, opt, ord)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
  LEFT JOIN pg_opclass oc ON oc.oid = u.cls LEFT JOIN pg_namespace ocn ON ocn.oid = oc.opcnamespace
  LEFT JOIN pg_collation co ON co.oid = u.coll LEFT JOIN pg_namespace con ON con.oid = co.collnamespace
 WHERE i.indexrelid = %s
 ORDER BY u.ord
"""

# pg_index.indoption per column: bit 0 DESC, bit 1 NULLS FIRST; what each says in CREATE INDEX.
_ORDER = {0: "", 1: "DESC NULLS LAST", 2: "NULLS FIRST", 3: "DESC"}


def _shape(conn: Conn, oid: int, twin: str, key: str, shadow: str, table: Table) -> IndexSpec:
    """The twin of index ``oid``, as data: ``shadow`` where it has ``key``, the rest as it is."""
    keys: list[sql.Composable] = []
    included: list[sql.Composable] = []
    rows = conn.execute(_SHAPE, [oid]).fetchall()
    for is_key, column, opc_schema, opc, coll_schema, coll, opt, *_ in rows:
        name = sql.Identifier(shadow if column == key else column)
        if not is_key:
            included.append(name)
            continue
        part: list[sql.Composable] = [name]
        if column != key:  # the new column keeps its type's own default class and collation
            if coll_schema is not None:
                part.append(Q("COLLATE {}").format(sql.Identifier(coll_schema, coll)))
            if opc_schema is not None:
                part.append(sql.Identifier(opc_schema, opc))
        if _ORDER[opt & 3]:
            part.append(Q(_ORDER[opt & 3]))
        keys.append(Q(" ").join(part))
    method, unique, options, space = rows[0][7], rows[0][8], rows[0][9] or [], rows[0][10]
    tail: list[sql.Composable] = []
    if included:
        tail.append(Q("INCLUDE ({})").format(Q(", ").join(included)))
    if options:
        pairs = (str(o).split("=", 1) for o in options)
        tail.append(
            Q("WITH ({})").format(
                Q(", ").join(Q("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in pairs)
            )
        )
    if space is not None:  # 0, the database's default: said by no clause
        tail.append(Q("TABLESPACE {}").format(sql.Identifier(space)))
    return IndexSpec(
        table, twin, Q(", ").join(keys), bool(unique), str(method), tail=Q(" ").join(tail) if tail else None
    )


def index_twin_steps(conn: Conn, step: Step) -> list[Step]:
    """One step per plain index on the key that has no valid twin yet: its twin, built CONCURRENTLY
    (on a partitioned table: ON ONLY, each partition CONCURRENTLY, ATTACH, as any index there)."""
    if step.twins is None:
        return []
    table, key, shadow = step.twins
    out: list[Step] = []
    for name, oid, twinned in conn.execute(plain_indexes(table, key, shadow)).fetchall():
        if twinned:
            continue
        twin = twin_name(str(name))
        spec = _shape(conn, int(oid), twin, key, shadow, table)
        one = replace(
            step,
            key=f"{step.key}:{twin}",
            description=f"index {twin} CONCURRENTLY: {name} on {shadow} instead of {key}",
            statements=(spec.on(table, twin),),
            done_when=s.index_valid(table.schema, twin),
            builds_index=(table.schema, twin),
            twins=None,
            superseded_when=None,
            locks=None,
        )
        out.extend(partition_steps(conn, replace(one, index=spec)) or [one])
    return out


def pieces(conn: Conn, step: Step) -> list[Step] | None:
    """The steps that ``step`` is run as, read from the catalog now: an index on a partitioned
    table, or the twins of a key's indexes; None when it runs as itself."""
    if step.twins is not None:
        return index_twin_steps(conn, step)
    return partition_steps(conn, step) if step.index is not None else None

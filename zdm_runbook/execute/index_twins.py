"""The twins of the indexes on a column that ``change_key_type`` widens, one build each.

The step is planned without the catalog; which indexes use the column, and how each is made, is
read when switch runs (see :mod:`zdm_runbook.plan.index_twins` for why). A twin is its original's
definition as PostgreSQL prints it (``pg_get_indexdef``), parsed by pglast with every reference to
the old column pointed at the new one: in its columns, its expressions and its predicate alike.
So it keeps the order, operator classes, collations, ``INCLUDE`` columns, ``NULLS NOT DISTINCT``,
method, uniqueness, storage parameters and tablespace, with nothing re-derived by hand.

Each twin is a step of its own (keyed ``<step>:<twin>``), built CONCURRENTLY (on a partitioned
table: ON ONLY, each partition CONCURRENTLY, ATTACH), guarded, retried and recorded like any other
index build, and idempotent: a re-run skips a twin that is built and valid, and an index the spec
twins itself is not twinned again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import psycopg
from pglast import ast, parse_sql
from pglast.stream import RawStream
from pglast.visitors import Visitor
from psycopg import sql

from zdm_runbook.execute.partitions import partition_steps
from zdm_runbook.plan import steps as s
from zdm_runbook.plan.index_twins import column_indexes, twin_name
from zdm_runbook.plan.steps import IndexSpec, Step
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import trusted

Conn = psycopg.Connection[Any]


class _Repoint(Visitor):
    """Every column reference named ``key`` becomes ``shadow`` (an index names its own table's
    columns only, unqualified)."""

    def __init__(self, key: str, shadow: str) -> None:
        super().__init__()
        self.key, self.shadow = key, shadow

    def visit_ColumnRef(self, ancestors: Any, node: ast.ColumnRef) -> None:
        fields = node.fields or ()
        if fields and isinstance(fields[-1], ast.String) and fields[-1].sval == self.key:
            node.fields = (*fields[:-1], ast.String(sval=self.shadow))


def _elements(elements: Any, key: str, shadow: str) -> str:
    """An index's column list, printed, with ``key`` renamed to ``shadow``: a key column keeps its
    order, but its operator class and collation were the old type's, so the new column takes its
    own type's defaults."""
    printed = []
    for element in elements or ():
        if element.name == key:
            element.name, element.opclass, element.collation = shadow, None, None
        printed.append(RawStream()(element))
    return ", ".join(printed)


def _twin_spec(definition: str, space: str | None, table: Table, names: tuple[str, str, str]) -> IndexSpec:
    """The twin (``names``: the twin, the key, the shadow) of the index ``definition`` (as
    ``pg_get_indexdef`` prints it; ``space``, its tablespace), as data."""
    twin, key, shadow = names
    stmt = cast(ast.IndexStmt, parse_sql(definition)[0].stmt)
    _Repoint(key, shadow)(stmt)
    tail: list[sql.Composable] = []
    if stmt.indexIncludingParams:
        tail.append(trusted(f"INCLUDE ({_elements(stmt.indexIncludingParams, key, shadow)})"))
    if stmt.nulls_not_distinct:
        tail.append(trusted("NULLS NOT DISTINCT"))
    if stmt.options:
        tail.append(trusted(f"WITH ({', '.join(RawStream()(o) for o in stmt.options)})"))
    if space is not None:  # the database's default: said by no clause
        tail.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(space)))
    if stmt.whereClause is not None:
        tail.append(trusted(f"WHERE {RawStream()(stmt.whereClause)}"))
    return IndexSpec(
        table,
        twin,
        trusted(_elements(stmt.indexParams, key, shadow)),
        bool(stmt.unique),
        str(stmt.accessMethod),
        tail=sql.SQL(" ").join(tail) if tail else None,
    )


def index_twin_steps(conn: Conn, step: Step) -> list[Step]:
    """One step per index on the key that has no valid twin yet: its twin, built CONCURRENTLY
    (on a partitioned table: ON ONLY, each partition CONCURRENTLY, ATTACH, as any index there)."""
    if step.twins is None:
        return []
    table, key, shadow, left_to_spec = step.twins
    out: list[Step] = []
    rows = conn.execute(column_indexes(table, key, shadow, left_to_spec)).fetchall()
    for name, twinned, definition, space in rows:
        if twinned:
            continue
        twin = twin_name(str(name))
        spec = _twin_spec(str(definition), space, table, (twin, key, shadow))
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

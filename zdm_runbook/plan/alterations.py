"""SQL of the in-place alterations whose builders only one operation needs: comments, replica
identity, the view a renamed table leaves (the shared builders are in :mod:`.steps`)."""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.plan.steps import qname
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL


def comment(table: Table, column: str | None, text: str | None) -> sql.Composed:
    """``COMMENT ON COLUMN``/``TABLE`` (``IS NULL`` removes it)."""
    value = sql.Literal(text) if text is not None else Q("NULL")
    if column is None:
        return Q("COMMENT ON TABLE {} IS {}").format(qname(table), value)
    return Q("COMMENT ON COLUMN {} IS {}").format(sql.Identifier(table.schema, table.name, column), value)


def comment_is(table: Table, column: str | None, text: str | None) -> sql.Composed:
    """True when the comment already reads ``text`` (or is absent, for None)."""
    rel = regclass(table.schema, table.name)
    if column is None:
        current = Q("obj_description({}, 'pg_class')").format(rel)
    else:
        current = Q(
            "col_description({rel},"
            " (SELECT attnum FROM pg_attribute WHERE attrelid = {rel} AND attname = {c}))"
        ).format(rel=rel, c=sql.Literal(column))
    return Q("SELECT {} IS NOT DISTINCT FROM {}").format(current, sql.Literal(text))


REPLICA_IDENTITY = {"default": "d", "full": "f", "nothing": "n", "index": "i"}
_IDENTITY_SQL = {"default": Q("DEFAULT"), "full": Q("FULL"), "nothing": Q("NOTHING")}


def replica_identity(table: Table, identity: str, index: str | None) -> sql.Composed:
    clause = (
        Q("USING INDEX {}").format(sql.Identifier(index))
        if identity == "index" and index
        else _IDENTITY_SQL[identity]
    )
    return Q("ALTER TABLE {} REPLICA IDENTITY {}").format(qname(table), clause)


def replica_identity_is(table: Table, identity: str, index: str | None) -> sql.Composed:
    check = Q("SELECT coalesce((SELECT relreplident = {} FROM pg_class WHERE oid = {}), false)").format(
        sql.Literal(REPLICA_IDENTITY[identity]), regclass(table.schema, table.name)
    )
    if identity != "index" or index is None:
        return check
    return Q(
        "SELECT ({}) AND coalesce((SELECT indisreplident FROM pg_index WHERE indexrelid = {}), false)"
    ).format(check, regclass(table.schema, index))


def is_view(schema: str, name: str) -> sql.Composed:
    return Q("SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = {} AND relkind = 'v')").format(
        regclass(schema, name)
    )

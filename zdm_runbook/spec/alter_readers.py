"""Readers of the operations that alter one thing of an existing table in place: defaults, NOT NULL,
comments, names (table, index, constraint), replica identity, a primary key. Each checks its
fields and records problems by path; :mod:`.readers` registers them with the others."""

from __future__ import annotations

from zdm_runbook.spec.model import Phase
from zdm_runbook.spec.operations import (
    AddPrimaryKey,
    DropDefault,
    DropNotNull,
    RenameConstraint,
    RenameIndex,
    RenameTable,
    SetComment,
    SetDefault,
    SetReplicaIdentity,
)
from zdm_runbook.spec.reader import Reader


def read_set_default(r: Reader) -> SetDefault | None:
    # A volatile default is fine here: SET DEFAULT changes the catalog only, for future rows.
    table, column = r.table(), r.ident("column")
    default = r.expr("default", what="default expression")
    return SetDefault(table, column, default) if table and column and default else None


def read_drop_default(r: Reader) -> DropDefault | None:
    table, column = r.table(), r.ident("column")
    phase = r.choice("phase", tuple(p.value for p in Phase), default=Phase.CONTRACT.value)
    if phase == Phase.MIGRATE.value:
        r.problem(
            "phase", "a default is dropped in expand, switch or contract, not in migrate (backfills only)"
        )
        return None
    return DropDefault(table, column, Phase(phase)) if table and column and phase else None


def read_drop_not_null(r: Reader) -> DropNotNull | None:
    table, column = r.table(), r.ident("column")
    return DropNotNull(table, column) if table and column else None


def read_set_comment(r: Reader) -> SetComment | None:
    table, column = r.table(), r.ident("column", required=False)
    if not r.has("comment"):
        r.problem("comment", "is required (null removes the comment)")
    comment = r.text("comment", required=False)
    return SetComment(table, column, comment) if table else None


def read_rename_index(r: Reader) -> RenameIndex | None:
    schema = r.ident("schema", required=False) or "public"
    old, new = r.ident("from"), r.ident("to")
    if old and new and old == new:
        r.problem("to", "is the same as from")
        return None
    return RenameIndex(schema, old, new) if old and new else None


def read_rename_constraint(r: Reader) -> RenameConstraint | None:
    table, old, new = r.table(), r.ident("from"), r.ident("to")
    if old and new and old == new:
        r.problem("to", "is the same as from")
        return None
    return RenameConstraint(table, old, new) if table and old and new else None


REPLICA_IDENTITIES = ("default", "full", "nothing", "index")


def read_set_replica_identity(r: Reader) -> SetReplicaIdentity | None:
    table = r.table()
    identity = r.choice("identity", REPLICA_IDENTITIES)
    index = r.ident("index", required=identity == "index")
    if identity != "index" and index is not None:
        r.problem("index", "is only for identity: index")
        return None
    return SetReplicaIdentity(table, identity, index) if table and identity else None


def read_add_primary_key(r: Reader) -> AddPrimaryKey | None:
    table, name, columns = r.table(), r.ident("name"), r.idents("columns")
    return AddPrimaryKey(table, name, columns) if table and name and columns else None


def read_rename_table(r: Reader) -> RenameTable | None:
    table, new = r.table("from"), r.ident("to")
    if table and new and table.name == new:
        r.problem("to", "is the same as from")
        return None
    return RenameTable(table, new) if table and new else None

"""The operations a spec may contain, as plain data: what to do, not how (see :mod:`.readers`).

Primitives map to one kind of schema change; recipes (``rename_column``, ``change_type``,
``add_not_null_column``) expand across all four phases. How they become steps is
:mod:`zdm_runbook.plan.planner`'s business; nothing here composes SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, assert_never

from zdm_runbook.spec.model import Phase, Table
from zdm_runbook.spec.sqltext import Expr, SqlType, Statement

# The values a spec may name; :mod:`zdm_runbook.plan.steps` maps each to its SQL keyword.
INDEX_METHODS = ("btree", "hash", "gist", "spgist", "gin", "brin")
FK_ACTIONS = ("no action", "restrict", "cascade", "set null", "set default")


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: SqlType
    not_null: bool = False
    default: Expr | None = None


@dataclass(frozen=True)
class CreateTable:
    NAME: ClassVar[str] = "create_table"
    table: Table
    columns: tuple[ColumnDef, ...]
    primary_key: tuple[str, ...] | None


@dataclass(frozen=True)
class AddColumn:
    NAME: ClassVar[str] = "add_column"
    table: Table
    column: str
    type: SqlType
    default: Expr | None


@dataclass(frozen=True)
class CreateIndex:
    NAME: ClassVar[str] = "create_index"
    table: Table
    name: str
    columns: tuple[str, ...] | None
    expression: Expr | None
    unique: bool
    where: Expr | None
    method: str


@dataclass(frozen=True)
class DropIndex:
    NAME: ClassVar[str] = "drop_index"
    schema: str
    name: str


@dataclass(frozen=True)
class AddCheck:
    NAME: ClassVar[str] = "add_check"
    table: Table
    name: str
    expression: Expr


@dataclass(frozen=True)
class AddForeignKey:
    NAME: ClassVar[str] = "add_foreign_key"
    table: Table
    name: str
    columns: tuple[str, ...]
    ref_table: Table
    ref_columns: tuple[str, ...]
    on_delete: str


@dataclass(frozen=True)
class AddUnique:
    NAME: ClassVar[str] = "add_unique"
    table: Table
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class SetNotNull:
    NAME: ClassVar[str] = "set_not_null"
    table: Table
    column: str


@dataclass(frozen=True)
class Backfill:
    NAME: ClassVar[str] = "backfill"
    table: Table
    assignments: tuple[tuple[str, Expr], ...]
    where: Expr | None


@dataclass(frozen=True)
class SetDefault:
    NAME: ClassVar[str] = "set_default"
    table: Table
    column: str
    default: Expr


@dataclass(frozen=True)
class DropDefault:
    NAME: ClassVar[str] = "drop_default"
    table: Table
    column: str
    phase: Phase  # contract unless the spec says otherwise; earlier only for a nullable column


@dataclass(frozen=True)
class DropNotNull:
    NAME: ClassVar[str] = "drop_not_null"
    table: Table
    column: str


@dataclass(frozen=True)
class SetComment:
    NAME: ClassVar[str] = "set_comment"
    table: Table
    column: str | None  # None: the table's comment
    comment: str | None  # None: remove it


@dataclass(frozen=True)
class RenameIndex:
    NAME: ClassVar[str] = "rename_index"
    schema: str
    old: str
    new: str


@dataclass(frozen=True)
class RenameConstraint:
    NAME: ClassVar[str] = "rename_constraint"
    table: Table
    old: str
    new: str


@dataclass(frozen=True)
class SetReplicaIdentity:
    NAME: ClassVar[str] = "set_replica_identity"
    table: Table
    identity: str  # default | full | nothing | index
    index: str | None


@dataclass(frozen=True)
class AddPrimaryKey:
    NAME: ClassVar[str] = "add_primary_key"
    table: Table
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class RenameTable:
    NAME: ClassVar[str] = "rename_table"
    table: Table
    new: str


@dataclass(frozen=True)
class DropColumn:
    NAME: ClassVar[str] = "drop_column"
    table: Table
    column: str


@dataclass(frozen=True)
class DropConstraint:
    NAME: ClassVar[str] = "drop_constraint"
    table: Table
    name: str


@dataclass(frozen=True)
class DropTable:
    NAME: ClassVar[str] = "drop_table"
    table: Table


@dataclass(frozen=True)
class RawSql:
    NAME: ClassVar[str] = "raw_sql"
    phase: Phase
    reason: str
    statements: tuple[Statement, ...]
    description: str


@dataclass(frozen=True)
class RenameColumn:
    NAME: ClassVar[str] = "rename_column"
    table: Table
    old: str
    new: str
    type: SqlType
    not_null: bool | None  # None: as the old column is (NOT NULL or not), decided when switch runs


@dataclass(frozen=True)
class ChangeType:
    NAME: ClassVar[str] = "change_type"
    table: Table
    column: str
    new_column: str
    type: SqlType
    using: Expr
    reverse: Expr
    not_null: bool | None  # None: as the old column is (NOT NULL or not), decided when switch runs
    # The new column's default, set by contract (when the old app is gone). None: the old column's,
    # cast to the new type, which the catalog check allows only when ``using`` is such a cast.
    default: Expr | None = None


@dataclass(frozen=True)
class ChangeKeyType:
    """A key column (primary key or unique, maybe referenced, maybe fed by a sequence or an
    identity), or a foreign key column that holds one, widened to bigint; ``new_column`` is its
    shadow until the swap, the old one's after."""

    NAME: ClassVar[str] = "change_key_type"
    table: Table
    column: str
    new_column: str
    type: SqlType


@dataclass(frozen=True)
class AddNotNullColumn:
    NAME: ClassVar[str] = "add_not_null_column"
    table: Table
    column: str
    type: SqlType
    backfill: Expr
    default: Expr | None


Operation = (
    CreateTable
    | AddColumn
    | CreateIndex
    | DropIndex
    | AddCheck
    | AddForeignKey
    | AddUnique
    | SetNotNull
    | SetDefault
    | DropDefault
    | DropNotNull
    | SetComment
    | RenameIndex
    | RenameConstraint
    | SetReplicaIdentity
    | AddPrimaryKey
    | RenameTable
    | Backfill
    | DropColumn
    | DropConstraint
    | DropTable
    | RawSql
    | RenameColumn
    | ChangeType
    | ChangeKeyType
    | AddNotNullColumn
)


def created_names(op: Operation) -> list[tuple[str, ...]]:
    """Names an operation creates: ``('column', schema, table, col)`` or ``('relation', schema, name)``."""
    match op:
        case AddColumn() | AddNotNullColumn():
            return [("column", op.table.schema, op.table.name, op.column)]
        case RenameColumn():
            return [("column", op.table.schema, op.table.name, op.new)]
        case ChangeType() | ChangeKeyType():
            return [("column", op.table.schema, op.table.name, op.new_column)]
        case CreateIndex() | AddUnique() | AddPrimaryKey():
            return [("relation", op.table.schema, op.name)]
        case RenameIndex():
            return [("relation", op.schema, op.new)]
        case RenameTable():
            return [("relation", op.table.schema, op.new)]
        case RenameConstraint():
            return [("constraint", op.table.schema, op.table.name, op.new)]
        case CreateTable():
            return [("relation", op.table.schema, op.table.name)]
        case AddCheck() | AddForeignKey():
            return [("constraint", op.table.schema, op.table.name, op.name)]
        case SetNotNull() | SetDefault() | DropDefault() | Backfill() | DropColumn() | DropConstraint():
            return []
        case DropTable() | DropIndex() | RawSql() | DropNotNull() | SetComment() | SetReplicaIdentity():
            return []
        case _:
            assert_never(op)

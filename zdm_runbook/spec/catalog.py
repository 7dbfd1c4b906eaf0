"""A spec checked against a live catalog: tables, columns, types and expressions must resolve.

The operations are replayed over the catalog in spec order, so a column added by an earlier
operation counts as present, and a re-run after a phase completed (new column already there, old
one already dropped) is accepted. Types and expressions are tried on the server inside one
READ ONLY transaction that is always rolled back, so nothing is ever changed by a check.
"""

from __future__ import annotations

from typing import Any, assert_never

import psycopg

from zdm_runbook.core.connect import connect
from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.spec import checks
from zdm_runbook.spec.catalog_state import CatalogState, CheckFailed, check_expr, need_columns, need_table
from zdm_runbook.spec.change import Change
from zdm_runbook.spec.operations import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddNotNullColumn,
    AddPrimaryKey,
    AddUnique,
    Backfill,
    ChangeKeyType,
    ChangeType,
    CreateIndex,
    CreateTable,
    DropColumn,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    DropTable,
    Operation,
    RawSql,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RenameTable,
    SetComment,
    SetDefault,
    SetNotNull,
    SetReplicaIdentity,
)


def check_change(conn: psycopg.Connection[Any], change: Change) -> list[Problem]:
    """Every problem found replaying ``change`` over the catalog of ``conn`` (empty if none)."""
    state = CatalogState(conn, operations=tuple(change.operations))
    problems: list[Problem] = []
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION READ ONLY")
        for i, op in enumerate(change.operations):
            path = f"operations[{i}].{op.NAME}"
            try:
                _check(state, op, path, problems)
            except CheckFailed as exc:
                problems.append(Problem(path, str(exc)))
    return problems


def require_valid(conninfo: str, change: Change) -> None:
    """Refuse (``SpecError``, every problem) a change whose tables, columns, types or expressions do
    not resolve in this database: checked read-only before a phase runs anything."""
    with connect(conninfo, phase="check", autocommit=True) as conn:
        problems = check_change(conn, change)
    if problems:
        raise SpecError(problems, change.source)


# The operations that change one existing table: each needs the table, then its own checks.
OnTable = (
    AddColumn
    | AddNotNullColumn
    | RenameColumn
    | ChangeType
    | ChangeKeyType
    | Backfill
    | CreateIndex
    | AddUnique
    | SetNotNull
    | SetDefault
    | DropDefault
    | AddCheck
    | AddForeignKey
    | DropNotNull
    | SetComment
    | RenameConstraint
    | SetReplicaIdentity
    | AddPrimaryKey
)


def _check(state: CatalogState, op: Operation, path: str, problems: list[Problem]) -> None:
    """Check one operation against the catalog as replayed so far: one case per operation."""
    match op:
        case CreateTable():
            if state.columns(op.table) is None:
                state.tables[op.table] = {c.name: state.type_name(c.type) or c.type.text for c in op.columns}
        case DropIndex() | RawSql():
            pass  # they name no table
        case RenameIndex():
            checks.check_rename_index(state, op, path, problems)
        case RenameTable():
            checks.check_rename_table(state, op, path, problems)
        case DropTable() | DropColumn() | DropConstraint():
            pass  # already gone is fine: the contract step is idempotent
        case (
            AddColumn()
            | AddNotNullColumn()
            | RenameColumn()
            | ChangeType()
            | ChangeKeyType()
            | Backfill()
            | CreateIndex()
            | AddUnique()
            | SetNotNull()
            | SetDefault()
            | DropDefault()
            | AddCheck()
            | AddForeignKey()
            | DropNotNull()
            | SetComment()
            | RenameConstraint()
            | SetReplicaIdentity()
            | AddPrimaryKey()
        ):
            if (cols := need_table(state, op.table, path, problems)) is not None:
                _check_on_table(state, cols, op, path, problems)
        case _:
            assert_never(op)


def _check_on_table(
    state: CatalogState, cols: dict[str, str], op: OnTable, path: str, problems: list[Problem]
) -> None:
    if isinstance(op, AddNotNullColumn | RenameColumn | ChangeType | ChangeKeyType | Backfill):
        checks.check_walk_key(state, op.table, path, problems)  # each backfills the table
    match op:
        case AddColumn() | AddNotNullColumn():
            checks.check_added_column(state, cols, op, path, problems)
        case RenameColumn():
            checks.check_rename(state, cols, op, path, problems)
        case ChangeType():
            checks.check_change_type(state, cols, op, path, problems)
        case ChangeKeyType():
            checks.check_change_key_type(state, cols, op, path, problems)
        case Backfill():
            checks.check_backfill(state, cols, op, path, problems)
        case CreateIndex():
            if op.columns:
                need_columns(cols, op.table, op.columns, f"{path}.columns", problems)
            check_expr(state, cols, op.table, op.expression, f"{path}.expression", problems)
            check_expr(state, cols, op.table, op.where, f"{path}.where", problems)
        case AddUnique():
            need_columns(cols, op.table, op.columns, f"{path}.columns", problems)
            checks.check_partitioned(state, op, path, problems)
        case SetNotNull():
            need_columns(cols, op.table, (op.column,), f"{path}.column", problems)
        case SetDefault() | DropDefault():
            checks.check_default(state, cols, op, path, problems)
        case DropNotNull():
            checks.check_drop_not_null(state, cols, op, path, problems)
        case SetComment() | RenameConstraint() | SetReplicaIdentity() | AddPrimaryKey():
            checks.check_table_level(state, cols, op, path, problems)
            if isinstance(op, AddPrimaryKey):
                checks.check_partitioned(state, op, path, problems)
        case AddCheck():
            check_expr(state, cols, op.table, op.expression, f"{path}.expression", problems)
        case AddForeignKey():
            need_columns(cols, op.table, op.columns, f"{path}.columns", problems)
            checks.check_partitioned(state, op, path, problems)
            ref = state.columns(op.ref_table)
            if ref is None:
                problems.append(Problem(f"{path}.references.table", f"table {op.ref_table} does not exist"))
            else:
                need_columns(ref, op.ref_table, op.ref_columns, f"{path}.references.columns", problems)
        case _:
            assert_never(op)

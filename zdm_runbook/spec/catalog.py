"""A spec checked against a live catalog: tables, columns, types and expressions must resolve.

The operations are replayed over the catalog in spec order, so a column added by an earlier
operation counts as present, and a re-run after a phase completed (new column already there, old
one already dropped) is accepted. Types and expressions are tried on the server inside one
READ ONLY transaction that is always rolled back, so nothing is ever changed by a check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, assert_never

import psycopg
from psycopg import sql

from zdm_runbook.core.connect import connect
from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.spec.change import Change
from zdm_runbook.spec.keys import key_facts, key_type_problem
from zdm_runbook.spec.model import Phase, Table
from zdm_runbook.spec.operations import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddNotNullColumn,
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
    DropTable,
    Operation,
    RawSql,
    RenameColumn,
    SetDefault,
    SetNotNull,
)
from zdm_runbook.spec.sqltext import Expr, SqlType, regclass, trusted

Q = sql.SQL


@dataclass
class _State:
    """What the catalog holds as the operations are replayed: table → column → type."""

    conn: psycopg.Connection[Any]
    tables: dict[Table, dict[str, str] | None] = field(default_factory=dict)

    def columns(self, table: Table) -> dict[str, str] | None:
        if table not in self.tables:
            # One round trip: a row with NULL oid when the table is missing, else one row per column.
            rows = self.conn.execute(
                Q(
                    "SELECT c.oid IS NOT NULL, a.attname, format_type(a.atttypid, NULL)"
                    " FROM (SELECT {} AS oid) c LEFT JOIN pg_attribute a"
                    " ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
                ).format(regclass(table.schema, table.name))
            ).fetchall()
            exists = bool(rows and rows[0][0])
            self.tables[table] = {str(r[1]): str(r[2]) for r in rows if r[1] is not None} if exists else None
        return self.tables[table]

    def not_null(self, table: Table, column: str) -> bool:
        """Whether ``column`` is NOT NULL in the catalog (a column added by the spec is not)."""
        row = self.conn.execute(
            Q("SELECT attnotnull FROM pg_attribute WHERE attrelid = {} AND attname = {}").format(
                regclass(table.schema, table.name), sql.Literal(column)
            )
        ).fetchone()
        return bool(row and row[0])

    def type_name(self, type_: SqlType) -> str | None:
        try:
            with self.conn.transaction(force_rollback=True):
                row = self.conn.execute(
                    Q("SELECT format_type(pg_typeof(CAST(NULL AS {})), NULL)").format(type_.sql)
                ).fetchone()
        except psycopg.Error as exc:
            raise _Bad(_first_line(exc)) from exc
        return str(row[0]) if row else None

    def try_expr(self, table: Table, expr: Expr, cast_to: SqlType | None = None) -> None:
        """Evaluate ``expr`` over a row shaped like the table *as replayed so far* (no rows read)."""
        value = expr.sql if cast_to is None else Q("CAST(({}) AS {})").format(expr.sql, cast_to.sql)
        row = Q(", ").join(
            Q("CAST(NULL AS {}) AS {}").format(trusted(type_), sql.Identifier(name))
            for name, type_ in (self.columns(table) or {}).items()
        )
        try:
            with self.conn.transaction(force_rollback=True):
                self.conn.execute(
                    Q("SELECT {} FROM (SELECT {}) AS {} WHERE false").format(
                        value, row, sql.Identifier(table.name)
                    )
                )
        except psycopg.Error as exc:
            raise _Bad(_first_line(exc)) from exc

    def volatile(self, expr: Expr) -> list[str]:
        if not expr.functions:
            return []
        rows = self.conn.execute(
            "SELECT DISTINCT proname FROM pg_proc WHERE proname = ANY(%s) AND provolatile = 'v'",
            [sorted(expr.functions)],
        ).fetchall()
        return [str(r[0]) for r in rows]


class _Bad(Exception):
    """A check that failed on the server, with PostgreSQL's message."""


def _first_line(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return str(primary or str(exc).splitlines()[0])


def check_change(conn: psycopg.Connection[Any], change: Change) -> list[Problem]:
    """Every problem found replaying ``change`` over the catalog of ``conn`` (empty if none)."""
    state = _State(conn)
    problems: list[Problem] = []
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION READ ONLY")
        for i, op in enumerate(change.operations):
            path = f"operations[{i}].{op.NAME}"
            try:
                _check(state, op, path, problems)
            except _Bad as exc:
                problems.append(Problem(path, str(exc)))
    return problems


def require_valid(conninfo: str, change: Change) -> None:
    """Refuse (``SpecError``, every problem) a change whose tables, columns, types or expressions do
    not resolve in this database: checked read-only before a phase runs anything."""
    with connect(conninfo, phase="check", autocommit=True) as conn:
        problems = check_change(conn, change)
    if problems:
        raise SpecError(problems, change.source)


def _need_table(state: _State, table: Table, path: str, problems: list[Problem]) -> dict[str, str] | None:
    cols = state.columns(table)
    if cols is None:
        problems.append(Problem(f"{path}.table", f"table {table} does not exist"))
    return cols


def _need_columns(
    cols: dict[str, str],
    table: Table,
    names: tuple[str, ...] | frozenset[str],
    path: str,
    problems: list[Problem],
) -> bool:
    missing = sorted(set(names) - set(cols))
    for name in missing:
        problems.append(Problem(path, f"column {name} does not exist in {table}"))
    return not missing


def _check_expr(
    state: _State,
    cols: dict[str, str],
    table: Table,
    expr: Expr | None,
    path: str,
    problems: list[Problem],
    cast_to: SqlType | None = None,
) -> None:
    if expr is None or not _need_columns(cols, table, expr.columns, path, problems):
        return
    try:
        state.try_expr(table, expr, cast_to)
    except _Bad as exc:
        problems.append(Problem(path, f"{expr.text}: {exc}"))


def _check_new_column(
    state: _State,
    cols: dict[str, str],
    table: Table,
    column: str,
    type_: SqlType,
    path: str,
    problems: list[Problem],
) -> None:
    wanted = state.type_name(type_)
    if column in cols and wanted and cols[column] != wanted:
        problems.append(
            Problem(path, f"{table}.{column} already exists with type {cols[column]}, not {wanted}")
        )
    cols.setdefault(column, wanted or type_.text)


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
)


def _check(state: _State, op: Operation, path: str, problems: list[Problem]) -> None:
    """Check one operation against the catalog as replayed so far: one case per operation."""
    match op:
        case CreateTable():
            if state.columns(op.table) is None:
                state.tables[op.table] = {c.name: state.type_name(c.type) or c.type.text for c in op.columns}
        case DropIndex() | RawSql():
            pass  # they name no table
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
        ):
            if (cols := _need_table(state, op.table, path, problems)) is not None:
                _check_on_table(state, cols, op, path, problems)
        case _:
            assert_never(op)


def _check_on_table(
    state: _State, cols: dict[str, str], op: OnTable, path: str, problems: list[Problem]
) -> None:
    match op:
        case AddColumn() | AddNotNullColumn():
            _check_added_column(state, cols, op, path, problems)
        case RenameColumn():
            _check_rename(state, cols, op, path, problems)
        case ChangeType():
            _check_change_type(state, cols, op, path, problems)
        case ChangeKeyType():
            _check_change_key_type(state, cols, op, path, problems)
        case Backfill():
            _check_backfill(state, cols, op, path, problems)
        case CreateIndex():
            if op.columns:
                _need_columns(cols, op.table, op.columns, f"{path}.columns", problems)
            _check_expr(state, cols, op.table, op.expression, f"{path}.expression", problems)
            _check_expr(state, cols, op.table, op.where, f"{path}.where", problems)
        case AddUnique():
            _need_columns(cols, op.table, op.columns, f"{path}.columns", problems)
        case SetNotNull():
            _need_columns(cols, op.table, (op.column,), f"{path}.column", problems)
        case SetDefault() | DropDefault():
            _check_default(state, cols, op, path, problems)
        case AddCheck():
            _check_expr(state, cols, op.table, op.expression, f"{path}.expression", problems)
        case AddForeignKey():
            _need_columns(cols, op.table, op.columns, f"{path}.columns", problems)
            ref = state.columns(op.ref_table)
            if ref is None:
                problems.append(Problem(f"{path}.references.table", f"table {op.ref_table} does not exist"))
            else:
                _need_columns(ref, op.ref_table, op.ref_columns, f"{path}.references.columns", problems)
        case _:
            assert_never(op)


def _check_default(
    state: _State, cols: dict[str, str], op: SetDefault | DropDefault, path: str, problems: list[Problem]
) -> None:
    if not _need_columns(cols, op.table, (op.column,), f"{path}.column", problems):
        return
    if isinstance(op, SetDefault):
        _check_expr(state, cols, op.table, op.default, f"{path}.default", problems, SqlType(cols[op.column]))
    elif op.phase != Phase.CONTRACT and state.not_null(op.table, op.column):
        problems.append(
            Problem(
                f"{path}.phase",
                f"{op.table}.{op.column} is NOT NULL: the old app's INSERTs that leave it out rely on"
                f" its default, so it is dropped in contract, not {op.phase.value}",
            )
        )


def _check_backfill(
    state: _State, cols: dict[str, str], op: Backfill, path: str, problems: list[Problem]
) -> None:
    for col, expr in op.assignments:
        if _need_columns(cols, op.table, (col,), f"{path}.set.{col}", problems):
            _check_expr(state, cols, op.table, expr, f"{path}.set.{col}", problems, SqlType(cols[col]))
    _check_expr(state, cols, op.table, op.where, f"{path}.where", problems)


def _check_added_column(
    state: _State, cols: dict[str, str], op: AddColumn | AddNotNullColumn, path: str, problems: list[Problem]
) -> None:
    _check_new_column(state, cols, op.table, op.column, op.type, f"{path}.column", problems)
    if op.default is not None:
        _check_expr(state, cols, op.table, op.default, f"{path}.default", problems, op.type)
        for fn in state.volatile(op.default):
            problems.append(
                Problem(
                    f"{path}.default",
                    f"{fn}() is VOLATILE on this server: as a DEFAULT it rewrites the table; use a backfill",
                )
            )
    if isinstance(op, AddNotNullColumn):
        _check_expr(state, cols, op.table, op.backfill, f"{path}.backfill", problems, op.type)


def _check_rename(
    state: _State, cols: dict[str, str], op: RenameColumn, path: str, problems: list[Problem]
) -> None:
    table = op.table
    if op.old not in cols and op.new not in cols:
        problems.append(Problem(f"{path}.from", f"column {op.old} does not exist in {table}"))
        return
    wanted = state.type_name(op.type)
    if op.old in cols and wanted and cols[op.old] != wanted:
        problems.append(
            Problem(
                f"{path}.type",
                f"{table}.{op.old} is {cols[op.old]}, not {wanted}:"
                " a rename keeps the type (use change_type to change it)",
            )
        )
    _check_new_column(state, cols, table, op.new, op.type, f"{path}.to", problems)


def _check_change_type(
    state: _State, cols: dict[str, str], op: ChangeType, path: str, problems: list[Problem]
) -> None:
    table = op.table
    if op.column not in cols and op.new_column not in cols:
        problems.append(Problem(f"{path}.column", f"column {op.column} does not exist in {table}"))
        return
    _check_new_column(state, cols, table, op.new_column, op.type, f"{path}.new_column", problems)
    facts = key_facts(state.conn, table, op.column) if op.column in cols else None
    if facts is not None and facts.is_key:
        problems.append(
            Problem(
                f"{path}.column",
                f"{table}.{op.column} is {facts.describe()}: change_type's contract would drop it."
                f" Use change_key_type: {{table: {table}, column: {op.column}, type: {op.type.text}}}",
            )
        )
        return
    if op.column in cols:
        _check_expr(state, cols, table, op.using, f"{path}.using", problems, op.type)
        old_type = SqlType(cols[op.column])
        _check_expr(state, cols, table, op.reverse, f"{path}.reverse", problems, old_type)


def _check_change_key_type(
    state: _State, cols: dict[str, str], op: ChangeKeyType, path: str, problems: list[Problem]
) -> None:
    if op.column not in cols:
        problems.append(Problem(f"{path}.column", f"column {op.column} does not exist in {op.table}"))
        return
    facts = key_facts(state.conn, op.table, op.column)
    wanted = state.type_name(op.type) or op.type.text
    why = key_type_problem(facts, wanted) if facts is not None else "could not be read from the catalog"
    if why:
        problems.append(Problem(f"{path}.column", f"{op.table}.{op.column} {why}"))
        return
    if facts is not None and facts.type != wanted:  # before the swap: the shadow is the new type
        _check_new_column(state, cols, op.table, op.new_column, op.type, f"{path}.new_column", problems)

"""The catalog as a spec's operations are replayed over it: tables and their columns (read once, then
changed by each operation), and the checks every operation shares (a table or column must exist,
an expression must evaluate over a row of the table, a new column must not clash).

Types and expressions are tried on the server inside transactions that are always rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.core.errors import Problem
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.operations import Operation
from zdm_runbook.spec.sqltext import Expr, SqlType, regclass, trusted

Q = sql.SQL


@dataclass
class CatalogState:
    """What the catalog holds as the operations are replayed: table → column → type."""

    conn: psycopg.Connection[Any]
    tables: dict[Table, dict[str, str] | None] = field(default_factory=dict)
    operations: tuple[Operation, ...] = ()  # the whole spec's, for checks that look at other ones

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

    def scalar(self, query: sql.Composed | sql.SQL) -> Any:
        """One value of a catalog query (None when it returns no row)."""
        row = self.conn.execute(query).fetchone()
        return None if row is None else row[0]

    def relkind(self, schema: str, name: str) -> str | None:
        """``r`` table, ``p`` partitioned table, ``v`` view, ``i`` index...; None when absent."""
        kind = self.scalar(Q("SELECT relkind FROM pg_class WHERE oid = {}").format(regclass(schema, name)))
        return None if kind is None else str(kind)

    def has_constraint(self, table: Table, name: str) -> bool:
        return bool(
            self.scalar(
                Q("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {} AND conname = {})").format(
                    regclass(table.schema, table.name), sql.Literal(name)
                )
            )
        )

    def primary_key(self, table: Table) -> tuple[str, list[str]] | None:
        """The table's primary key: its name and columns."""
        row = self.conn.execute(
            Q(
                "SELECT c.conname, array_agg(a.attname ORDER BY k.ord) FROM pg_constraint c"
                " CROSS JOIN unnest(c.conkey) WITH ORDINALITY k(attnum, ord)"
                " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
                " WHERE c.conrelid = {} AND c.contype = 'p' GROUP BY c.conname"
            ).format(regclass(table.schema, table.name))
        ).fetchone()
        return None if row is None else (str(row[0]), [str(c) for c in row[1]])

    def unique_index_on(self, table: Table, index: str) -> bool:
        """Whether ``index`` is a unique, non-partial index of ``table`` (what a replica identity needs)."""
        return bool(
            self.scalar(
                Q(
                    "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = {} AND indrelid = {}"
                    " AND indisunique AND indpred IS NULL)"
                ).format(regclass(table.schema, index), regclass(table.schema, table.name))
            )
        )

    def server_major(self) -> int:
        return int(str(self.scalar(Q("SHOW server_version_num")) or 0)) // 10000

    def type_name(self, type_: SqlType) -> str | None:
        try:
            with self.conn.transaction(force_rollback=True):
                row = self.conn.execute(
                    Q("SELECT format_type(pg_typeof(CAST(NULL AS {})), NULL)").format(type_.sql)
                ).fetchone()
        except psycopg.Error as exc:
            raise CheckFailed(first_line(exc)) from exc
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
            raise CheckFailed(first_line(exc)) from exc

    def volatile(self, expr: Expr) -> list[str]:
        if not expr.functions:
            return []
        rows = self.conn.execute(
            "SELECT DISTINCT proname FROM pg_proc WHERE proname = ANY(%s) AND provolatile = 'v'",
            [sorted(expr.functions)],
        ).fetchall()
        return [str(r[0]) for r in rows]


class CheckFailed(Exception):
    """A check that failed on the server, with PostgreSQL's message."""


def first_line(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return str(primary or str(exc).splitlines()[0])


def need_table(
    state: CatalogState, table: Table, path: str, problems: list[Problem]
) -> dict[str, str] | None:
    cols = state.columns(table)
    if cols is None:
        problems.append(Problem(f"{path}.table", f"table {table} does not exist"))
    return cols


def need_columns(
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


def check_expr(
    state: CatalogState,
    cols: dict[str, str],
    table: Table,
    expr: Expr | None,
    path: str,
    problems: list[Problem],
    cast_to: SqlType | None = None,
) -> None:
    if expr is None or not need_columns(cols, table, expr.columns, path, problems):
        return
    try:
        state.try_expr(table, expr, cast_to)
    except CheckFailed as exc:
        problems.append(Problem(path, f"{expr.text}: {exc}"))


def check_new_column(
    state: CatalogState,
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

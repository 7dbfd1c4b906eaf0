"""Keyset ranges over a table's key: how the backfill and the verification walk a table in batches.

A batch is the half-open range ``(lower, upper]`` of the table's primary key (or a unique, NOT
NULL, non-partial btree key), compared as a row ``(k1, k2, ...)`` so composite keys work the same
way. Key values travel as text and are passed back as untyped parameters, which PostgreSQL reads
as the column's own type: any btree-ordered key (integer, bigint, uuid, text, ...) works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.plan.steps import qname
from zdm_runbook.spec.keys import no_walk_key, walk_key
from zdm_runbook.spec.model import Table

Conn = psycopg.Connection[Any]
Key = list[str]  # one key value per key column, as text
# A side of a key range: a key (sent as literals), or a composed row of placeholders such as
# :meth:`TableKey.placeholders` (sent as parameters of a statement prepared once).
Bound = Key | sql.Composable


@dataclass(frozen=True)
class TableKey:
    """The key a table is walked by: its columns, in index order, and where they come from."""

    table: Table
    columns: tuple[str, ...]
    source: str

    @property
    def row(self) -> sql.Composed:
        """``("k1", "k2")``: the key as a row, for comparisons and ORDER BY."""
        return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in self.columns))

    def literal(self, key: Key) -> sql.Composed:
        """A key as a row of untyped literals, which PostgreSQL reads as the key columns' types.

        Literals, not ``%s`` parameters: the queries around them carry spec expressions, in which
        a ``%`` is the modulo operator and must reach the server as written.
        """
        return sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(v) for v in key))

    def placeholders(self, first: int) -> sql.Composed:
        """``($first, $first+1, ...)``: a key as server-side parameters, one per key column, for a
        statement composed once and run per batch with each batch's keys (through a
        ``psycopg.RawCursor``, whose ``$n`` leave a spec expression's ``%`` as written)."""
        return sql.SQL("({})").format(
            sql.SQL(", ").join(sql.SQL(f"${first + i}") for i in range(len(self.columns)))
        )

    def _side(self, bound: Bound) -> sql.Composable:
        return bound if isinstance(bound, sql.Composable) else self.literal(bound)

    def as_text(self) -> sql.Composed:
        """``ARRAY["k1"::text, "k2"::text]``: a key as the text values the ledger stores."""
        return sql.SQL("ARRAY[{}]").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in self.columns)
        )

    def order(self, desc: bool = False) -> sql.Composed:
        way = sql.SQL(" DESC") if desc else sql.SQL("")
        return sql.SQL(", ").join(sql.SQL("{}{}").format(sql.Identifier(c), way) for c in self.columns)

    def range(self, lower: Bound | None, upper: Bound | None) -> sql.Composed:
        """The condition ``row > lower AND row <= upper`` (either side optional)."""
        parts: list[sql.Composable] = []
        if lower is not None:
            parts.append(sql.SQL("{} > {}").format(self.row, self._side(lower)))
        if upper is not None:
            parts.append(sql.SQL("{} <= {}").format(self.row, self._side(upper)))
        cond = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
        return sql.SQL("({})").format(cond)

    def count(self, lower: Bound | None, upper: Bound | None) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {} WHERE {}").format(qname(self.table), self.range(lower, upper))

    def last_key(self) -> sql.Composed:
        """The table's greatest key now: the backfill's upper bound, captured when it starts."""
        return sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT 1").format(
            self.as_text(), qname(self.table), self.order(desc=True)
        )


def table_key(conn: Conn, table: Table, path: str = "table") -> TableKey:
    """The primary key, else the narrowest unique NOT NULL btree key; refused if there is none (the
    catalog check refuses that before a phase runs: :func:`zdm_runbook.spec.keys.walk_key`)."""
    found = walk_key(conn, table)
    if found is not None:
        return TableKey(table, found[0], found[1])
    exists = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL", [table.schema, table.name]
    )
    row = exists.fetchone()
    if not (row and row[0]):
        raise SpecError([Problem(path, f"table {table} does not exist")])
    raise SpecError([Problem(path, no_walk_key(table))])

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
from zdm_runbook.spec.model import Table

Conn = psycopg.Connection[Any]
Key = list[str]  # one key value per key column, as text
# A side of a key range: a key (sent as literals), or a composed row of placeholders such as
# :meth:`TableKey.placeholders` (sent as parameters of a statement prepared once).
Bound = Key | sql.Composable

_KEYS = """
SELECT c.relname AS index_name, i.indisprimary,
       array_agg(a.attname::text ORDER BY k.ord) AS columns, bool_and(a.attnotnull) AS not_null
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_am am ON am.oid = c.relam AND am.amname = 'btree'
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
  AND (i.indisprimary OR i.indisunique) AND i.indisvalid
  AND i.indpred IS NULL AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts
GROUP BY c.relname, i.indisprimary
ORDER BY i.indisprimary DESC, count(*), c.relname
"""


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

    def batch_end(self, lower: Bound | None, upper: Bound | None, size: int | sql.Composable) -> sql.Composed:
        """The key ``size`` rows after ``lower``: an index-only skip, one key turned to text.

        No row means fewer than ``size`` remain: :meth:`count` then sizes the last batch. ``size``
        may be a placeholder, whose value is then the number of rows to skip (``size - 1``)."""
        skip = size if isinstance(size, sql.Composable) else sql.Literal(size - 1)
        return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1").format(
            self.as_text(), qname(self.table), self.range(lower, upper), self.order(), skip
        )

    def count(self, lower: Bound | None, upper: Bound | None) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {} WHERE {}").format(qname(self.table), self.range(lower, upper))

    def last_key(self) -> sql.Composed:
        """The table's greatest key now: the backfill's upper bound, captured when it starts."""
        return sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT 1").format(
            self.as_text(), qname(self.table), self.order(desc=True)
        )


def table_key(conn: Conn, table: Table, path: str = "table") -> TableKey:
    """The primary key, else the narrowest unique NOT NULL btree key; refused if there is none."""
    with conn.cursor() as cur:
        cur.execute(_KEYS, [table.schema, table.name])
        rows = cur.fetchall()
    for _, primary, columns, not_null in rows:
        if not_null:
            return TableKey(table, tuple(columns), "primary key" if primary else "unique key")
    exists = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL", [table.schema, table.name]
    )
    row = exists.fetchone()
    if not (row and row[0]):
        raise SpecError([Problem(path, f"table {table} does not exist")])
    raise SpecError(
        [
            Problem(
                path,
                f"{table} has no primary key and no unique NOT NULL key: a backfill walks the table in"
                " key ranges and needs one. Add a primary key first (CREATE UNIQUE INDEX CONCURRENTLY,"
                " then ALTER TABLE ... ADD PRIMARY KEY USING INDEX)",
            )
        ]
    )

"""What the catalog says about a key column: the facts that decide between ``change_type`` and
``change_key_type``, read in one query.

A column that is a primary key, is referenced by a foreign key, or is fed by a sequence or an
identity cannot change type by ``change_type``: its contract would drop the key itself (and the
foreign keys with it, or fail on them). ``change_key_type`` swaps such a key instead; it needs the
key to be one column, unique (a primary key or unique constraint), and smallint or integer. It
also widens the other end of a key's foreign keys, a column that references a key on its own
(``orders.customer_id``): once the key passes the int range, so must the columns that hold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

WIDENS = ("smallint", "integer")

_FACTS = sql.SQL(
    "SELECT format_type(a.atttypid, NULL) AS type,"
    " a.attidentity <> '' AS identity,"
    " pg_get_serial_sequence(a.attrelid::regclass::text, a.attname) AS sequence,"
    " (SELECT c.contype FROM pg_constraint c WHERE c.conrelid = a.attrelid AND c.contype IN ('p', 'u')"
    "   AND c.conkey = ARRAY[a.attnum] ORDER BY c.contype LIMIT 1) AS key,"
    " EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = a.attrelid AND c.contype IN ('p', 'u')"
    "   AND a.attnum = ANY (c.conkey) AND cardinality(c.conkey) > 1) AS in_composite_key,"
    " coalesce((SELECT array_agg(c.conrelid::regclass::text || '.' || c.conname ORDER BY 1)"
    "   FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = a.attrelid AND c.conparentid = 0"
    "   AND a.attnum = ANY (c.confkey)), '{{}}') AS referenced_by,"
    " EXISTS (SELECT 1 FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = a.attrelid"
    "   AND a.attnum = ANY (c.confkey) AND cardinality(c.confkey) > 1) AS composite_reference,"
    " coalesce((SELECT array_agg(c.conname::text || ' -> ' || c.confrelid::regclass::text ORDER BY 1)"
    "   FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid = a.attrelid AND c.conparentid = 0"
    "   AND c.conkey = ARRAY[a.attnum]), '{{}}') AS references,"
    " EXISTS (SELECT 1 FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid = a.attrelid"
    "   AND a.attnum = ANY (c.conkey) AND cardinality(c.conkey) > 1) AS in_composite_reference"
    " FROM pg_attribute a WHERE a.attrelid = {table} AND a.attname = {column} AND NOT a.attisdropped"
)


@dataclass(frozen=True)
class KeyFacts:
    """One column as a key: its type, what feeds it, what makes it a key, who references it."""

    type: str
    identity: bool
    sequence: str | None
    key: str | None  # 'p' primary key, 'u' unique constraint, on this column alone; None: neither
    in_composite_key: bool
    referenced_by: list[str]
    composite_reference: bool
    references: list[str]  # this column's own one-column foreign keys: "name -> table"
    in_composite_reference: bool

    @property
    def is_key(self) -> bool:
        """What ``change_type``'s contract would break by dropping the column."""
        return self.key == "p" or bool(self.referenced_by) or self.identity or self.sequence is not None

    @property
    def holds_only(self) -> bool:
        """A foreign key column that is no key of its own (``events.customer_id``): what
        ``change_key_type`` can widen on a partitioned table too, where no key is re-created."""
        return self.key is None and not self.identity and self.sequence is None and bool(self.references)

    def describe(self) -> str:
        parts = []
        if self.key == "p":
            parts.append("the primary key")
        if self.referenced_by:
            parts.append(f"referenced by {', '.join(self.referenced_by)}")
        if self.identity:
            parts.append("an identity column")
        elif self.sequence:
            parts.append(f"fed by sequence {self.sequence}")
        return "; ".join(parts)


def key_facts(conn: psycopg.Connection[Any], table: Table, column: str) -> KeyFacts | None:
    """The facts about ``table.column`` (None when the table or the column is not there)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            _FACTS.format(table=regclass(table.schema, table.name), column=sql.Literal(column))
        ).fetchone()
    return None if row is None else KeyFacts(**row)


def key_type_problem(facts: KeyFacts, new_type: str) -> str | None:
    """Why ``change_key_type`` cannot widen this column (None: it can, or it already has)."""
    if facts.type == new_type:
        return None  # swapped already: a re-run after switch
    if facts.type not in WIDENS:
        return f"is {facts.type}: change_key_type widens a smallint or integer key to {new_type}"
    if facts.in_composite_key or facts.composite_reference or facts.in_composite_reference:
        return (
            "is part of a key of several columns: change_key_type swaps a one-column key only, and"
            " cannot move a composite key (or a foreign key over several columns) yet. Widen it in a"
            " maintenance window: ALTER COLUMN … TYPE bigint rewrites the table, and each table whose"
            " foreign key uses it, under ACCESS EXCLUSIVE"
        )
    if facts.key is None and not facts.references and not facts.identity and facts.sequence is None:
        return (
            "is neither a primary key, nor under a unique constraint of its own, nor a foreign key"
            " column, nor fed by a sequence or an identity: the swap needs one of them (a plain column"
            " changes type by change_type)"
        )
    return None


# The keys a table can be walked by in key ranges (the backfill's and the verification's batches):
# the primary key, or a unique, non-partial btree key on plain columns; each with whether its
# columns are all NOT NULL. The primary key first, then the narrowest.
_WALK_KEYS = """
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


def walk_key(conn: psycopg.Connection[Any], table: Table) -> tuple[tuple[str, ...], str] | None:
    """The key a backfill walks ``table`` by, and what it is ("primary key", "unique key"); None
    when the table has none (or is not there)."""
    with conn.cursor() as cur:
        rows = cur.execute(_WALK_KEYS, [table.schema, table.name]).fetchall()
    for _, primary, columns, not_null in rows:
        if not_null:
            return tuple(str(c) for c in columns), "primary key" if primary else "unique key"
    return None


def no_walk_key(table: Table) -> str:
    """Why a backfill cannot run on ``table``, and what to do."""
    return (
        f"{table} has no primary key and no unique NOT NULL key: a backfill walks the table in"
        " key ranges and needs one. Add a primary key first (CREATE UNIQUE INDEX CONCURRENTLY,"
        " then ALTER TABLE ... ADD PRIMARY KEY USING INDEX)"
    )

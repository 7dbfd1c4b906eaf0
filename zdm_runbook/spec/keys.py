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
        return "is part of a key of several columns: change_key_type swaps a one-column key only"
    if facts.key is None and not facts.references:
        return (
            "is neither a primary key, nor under a unique constraint of its own, nor a foreign key"
            " column: the swap needs one of them (a plain column changes type by change_type)"
        )
    return None

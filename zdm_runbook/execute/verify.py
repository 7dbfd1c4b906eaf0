"""Verification after a backfill: batched, no long transaction, zero mismatches to pass.

A mismatch is a row (within the backfill's ``where``) whose target still differs from its
expression: for the recipes that is the dual-write invariant itself (``new = using(old)``). The
whole table is checked, rows added after the backfill started included, since the dual-write
trigger is what keeps those right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.execute.keyset import Key, table_key
from zdm_runbook.plan.steps import BackfillSpec, qname

Conn = psycopg.Connection[Any]
SAMPLE = 10


@dataclass
class Verification:
    """The result: rows checked, mismatches, and a sample of offending keys."""

    table: str
    key_columns: tuple[str, ...]
    rows_checked: int = 0
    mismatches: int = 0
    sample: list[Key] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def __str__(self) -> str:
        if self.ok:
            return f"verified {self.table}: {self.rows_checked:,} rows checked, 0 mismatches"
        keys = "; ".join(", ".join(k) for k in self.sample)
        cols = ", ".join(self.key_columns)
        return (
            f"NOT verified {self.table}: {self.mismatches:,} of {self.rows_checked:,} rows differ from"
            f" their expression; first ({cols}): {keys}"
        )


def verify(
    conn: Conn, spec: BackfillSpec, batch_size: int = 20_000, statement_timeout: float = 30.0
) -> Verification:
    """Walk the whole table in key batches (one short read-only transaction each) counting mismatches."""
    key = table_key(conn, spec.table)
    result = Verification(str(spec.table), key.columns)
    lower: Key | None = None
    while True:
        query = sql.SQL(
            "WITH b AS MATERIALIZED"
            " (SELECT {cols}, ({bad}) AS bad FROM {t} WHERE {cond} ORDER BY {asc} LIMIT {size})"
            " SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM b WHERE bad),"
            " (SELECT {text} FROM b ORDER BY {desc} LIMIT 1),"
            " (SELECT array_agg(k)"
            "  FROM (SELECT {text} AS k FROM b WHERE bad ORDER BY {asc} LIMIT {sample}) s)"
        ).format(
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in key.columns),
            bad=sql.SQL("coalesce({}, false)").format(spec.condition()),
            t=qname(spec.table),
            cond=key.range(lower, None),
            size=sql.Literal(batch_size),
            sample=sql.Literal(SAMPLE),
            asc=key.order(),
            text=key.as_text(),
            desc=key.order(desc=True),
        )
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [str(round(statement_timeout * 1000))]
            )
            row = conn.execute(query).fetchone()
        if row is None or not row[0]:
            return result
        result.rows_checked += int(row[0])
        result.mismatches += int(row[1])
        if row[3] and len(result.sample) < SAMPLE:
            result.sample += [list(k) for k in row[3]][: SAMPLE - len(result.sample)]
        lower = list(row[2])

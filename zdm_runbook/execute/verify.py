"""Verification after a backfill: batched, no long transaction, zero mismatches to pass.

A mismatch is a row (within the backfill's ``where``) whose target still differs from its
expression: for the recipes that is the dual-write invariant itself (``new = using(old)``). The
whole table is checked, rows added after the backfill started included, since the dual-write
trigger is what keeps those right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
    targets: tuple[str, ...] = ()  # the columns checked: one pass verifies several, a line each

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def __str__(self) -> str:
        of = f" in {', '.join(self.targets)}" if self.targets else ""
        if self.ok:
            return f"verified {self.table}: {self.rows_checked:,} rows checked, 0 mismatches{of}"
        keys = "; ".join(", ".join(k) for k in self.sample)
        cols = ", ".join(self.key_columns)
        return (
            f"NOT verified {self.table}: {self.mismatches:,} of {self.rows_checked:,} rows differ from"
            f" their expression{of}; first ({cols}): {keys}"
        )


def verify(
    conn: Conn, spec: BackfillSpec, batch_size: int = 20_000, statement_timeout: float = 30.0
) -> Verification:
    """Walk the whole table in key batches (one short read-only transaction each) counting mismatches."""
    return verify_all(conn, [spec], batch_size, statement_timeout)[0]


def verify_all(
    conn: Conn,
    specs: Sequence[BackfillSpec],
    batch_size: int = 20_000,
    statement_timeout: float = 30.0,
    rest: Callable[[float], float] | None = None,
) -> list[Verification]:
    """Verify the backfills of one pass (``specs``, one table) in one walk of it: each batch read
    once, each backfill's mismatches counted apart. After each read, ``rest`` (given the read's
    seconds) says how long to sleep before the next: a verification beside the app reads at the
    pass's duty, not at full speed."""
    key = table_key(conn, specs[0].table)
    results = [
        Verification(str(spec.table), key.columns, targets=tuple(col for col, _ in spec.assignments))
        for spec in specs
    ]
    lower: Key | None = None
    while True:
        query = sql.SQL(
            "WITH b AS MATERIALIZED (SELECT {cols}, {bads} FROM {t} WHERE {cond} ORDER BY {asc} LIMIT {size})"
            " SELECT (SELECT count(*) FROM b), (SELECT {text} FROM b ORDER BY {desc} LIMIT 1), {each}"
        ).format(
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in key.columns),
            bads=sql.SQL(", ").join(
                sql.SQL("coalesce({}, false) AS {}").format(spec.condition(), sql.Identifier(f"bad{i}"))
                for i, spec in enumerate(specs)
            ),
            t=qname(specs[0].table),
            cond=key.range(lower, None),
            size=sql.Literal(batch_size),
            asc=key.order(),
            text=key.as_text(),
            desc=key.order(desc=True),
            each=sql.SQL(", ").join(
                sql.SQL(
                    "(SELECT count(*) FROM b WHERE {bad}), (SELECT array_agg(k)"
                    " FROM (SELECT {text} AS k FROM b WHERE {bad} ORDER BY {asc} LIMIT {n}) s)"
                ).format(
                    bad=sql.Identifier(f"bad{i}"), text=key.as_text(), asc=key.order(), n=sql.Literal(SAMPLE)
                )
                for i in range(len(specs))
            ),
        )
        started = time.monotonic()
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [str(round(statement_timeout * 1000))]
            )
            row = conn.execute(query).fetchone()
        if row is None or not row[0]:
            return results
        for i, result in enumerate(results):
            result.rows_checked += int(row[0])
            result.mismatches += int(row[2 + 2 * i])
            sample = row[3 + 2 * i]
            if sample and len(result.sample) < SAMPLE:
                result.sample += [list(k) for k in sample][: SAMPLE - len(result.sample)]
        lower = list(row[1])
        if rest is not None:
            time.sleep(rest(time.monotonic() - started))

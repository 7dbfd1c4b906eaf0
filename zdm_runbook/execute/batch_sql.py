"""A batch's statements, composed once per backfill and run with each batch's keys as parameters.

While the app shares the server a backfill runs small batches (500 rows: a few milliseconds
each), and then what surrounds the UPDATE counts. Measured on 300,000 rows in 500-row batches
without load (PostgreSQL 18, 2 cores): the engine spent 3.4 to 4.0 ms per batch where a bare
keyset loop spent 2.1, of which about 0.5 ms went to composing the statements again for each
batch's literal keys and the server parsing and planning them anew. Here each statement is
composed once, with ``$n`` placeholders, and run through a ``psycopg.RawCursor``: psycopg
prepares it on the server after its fifth run, and a batch sends only the keys. With the
checkpoint written in one statement and the batch pipelined (BEGIN with the range's end, the
checkpoint with the COMMIT), the same run took 3.0 to 3.2 ms per batch against the bare loop's
1.9, the UPDATE and the range's end taking what the bare loop's two statements take
(``bench/backfill.py`` shows what that buys under load).

The range's end and the UPDATE are now one statement (:meth:`BatchStatements.batch`): the key
``size`` rows on (an index-only skip; where fewer are left, the last key) and the UPDATE up to
it, in CTEs of one snapshot. So a batch is two round trips, not three (BEGIN with that statement,
then the checkpoint with the COMMIT): one network round trip less per batch where the notebook
runs on another host than the server, and with several backfills, their counts read in the
UPDATE's own snapshot. On one host, old and new alternating on one server (six runs each, 2
cores, 18.6, no load): 500-row batches took a median of 2.19 ms against 2.66; batches of up to
20,000 rows 62.7 against 59.5 ms, within those runs' spread of 50 to 75. The plan stays on the
key's index for any key width, as a generic plan too: the row comparison with the end's CTE is an
index condition (``tests/test_batch_sql.py``).

The keys travel as text, untyped, so the server reads them as the key columns' own types, as
the literals did, and any btree-ordered key (integer, uuid, text, composite) works the same way.
``RawCursor``'s placeholders are PostgreSQL's own, so a spec expression's ``%`` reaches the
server as written (spec expressions cannot hold ``$n`` parameters: the spec reader refuses them).

While the app shares the server, each batch first reads the range the batch before it wrote, in
the same round trip (:meth:`end`; the pass's last range is read by the call that finds nothing
left). The first read of a row after the transaction that wrote it commits sets its hint bits,
and with data checksums on (initdb's default since PostgreSQL 18) or ``wal_log_hints``, the first
such change to a page after a checkpoint writes the whole page to the WAL. Read just after the
batch, the page has been changed in this checkpoint's cycle already and needs no second image;
read by the verification after the pass, with checkpoints in between, every page does
(``bench/hint_bits.py``: about 120 MB of such images for 600,000 rows without the read, 0 with it).
Measured with the engine on 1,000,000 rows, in batches of up to 20,000 and of 500 rows (18.6,
checksums on, a checkpoint between the pass and the verification): the verification wrote 257 to
267 MB of WAL without the read and 0 with it (the whole 674 to 690 against 420 to 425 MB), and
took 0.9 to 1.2 s against 1.3 to 1.5 s; the pass took 12 to 22% longer, the work moved from the
verification into it. Why only while sharing: alone on the server a pass is short, its
verification usually follows within one checkpoint's cycle and needs no images, and the pass's
own rate is what an operator waits for; beside the app a pass lasts minutes, checkpoints come
between, and every image is WAL the server writes, ships to its replicas and archives.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.core.connect import redact, tagged
from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.execute.keyset import Key, TableKey
from zdm_runbook.execute.walk import Walk
from zdm_runbook.plan.steps import qname

Conn = psycopg.Connection[Any]


# The batch statement's own names for its parts (a spec expression sees them too: unlikely names).
_END, _COUNTS, _UPDATE = (sql.Identifier(f"zdm_batch_{part}") for part in ("end", "counts", "update"))


class BatchStatements:
    """A pass's batch (:class:`Walk`) as one statement, and the read of the range it wrote, each
    composed once per shape (a first batch has no lower bound) and cached as bytes."""

    def __init__(self, key: TableKey, walk: Walk) -> None:
        self.key, self.walk = key, walk
        self._cache: dict[tuple[str, bool], bytes] = {}
        self._written: tuple[Key | None, Key] | None = None  # the range the last UPDATE wrote

    def explain(self, conn: Conn, paths: list[str]) -> None:
        """Have the server plan each backfill's UPDATE of the whole table, so that a bad
        expression is a :class:`SpecError` naming its operation (``paths``) before any batch."""
        for path, spec in zip(paths, self.walk.specs, strict=True):
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("EXPLAIN {}").format(spec.update(self.key.range(None, None))))
            except psycopg.OperationalError:  # the connection, not the expression: the engine retries
                raise
            except psycopg.Error as exc:
                raise SpecError(
                    [Problem(path, f"the backfill cannot run: {redact(str(exc)).strip()}")]
                ) from None

    def _batch(
        self, lower: sql.Composable | None, upper: sql.Composable, size: sql.Composable
    ) -> sql.Composed:
        """The batch: its end (the key ``size`` rows after ``lower``, an index-only skip; where
        fewer are left, the last key up to ``upper``) and its rows scanned, with several backfills
        each one's rows still to change, and the UPDATE of the range up to that end; it returns
        the end as text, the rows scanned, and the rows each backfill changed. One statement, so
        all of it reads one snapshot. The second way to the end runs only where the first finds
        no row (an Append stops at its LIMIT)."""
        key, cols = self.key, sql.SQL(", ").join(sql.Identifier(c) for c in self.key.columns)
        table, within = qname(key.table), key.range(lower, upper)
        rows = sql.SQL("{}::int8").format(size)
        full = sql.SQL("SELECT {}, {} FROM {} WHERE {} ORDER BY {} OFFSET {} - 1 LIMIT 1").format(
            cols, rows, table, within, key.order(), rows
        )
        last = sql.SQL("SELECT {}, ({}) FROM {} WHERE {} ORDER BY {} LIMIT 1").format(
            cols, key.count(lower, upper), table, within, key.order(desc=True)
        )
        end = sql.SQL("(SELECT {} FROM {})").format(cols, _END)
        parts = [
            sql.SQL(
                "{} ({}, zdm_batch_rows) AS MATERIALIZED (SELECT * FROM (({}) UNION ALL ({})) e LIMIT 1)"
            ).format(_END, cols, full, last)
        ]
        if len(self.walk.specs) > 1:  # counted in the UPDATE's snapshot, as it was before it
            counts = self.walk.counts(key, lower, end)
            parts.append(sql.SQL("{} AS MATERIALIZED ({})").format(_COUNTS, counts))
            updated = sql.SQL("{}.* FROM {}").format(_COUNTS, _COUNTS)
        else:
            updated = sql.SQL("(SELECT count(*) FROM {})").format(_UPDATE)
        parts.append(sql.SQL("{} AS ({} RETURNING 1)").format(_UPDATE, self.walk.update(key, lower, end)))
        return sql.SQL("WITH {} SELECT (SELECT {} FROM {}), (SELECT zdm_batch_rows FROM {}), {}").format(
            sql.SQL(", ").join(parts), key.as_text(), _END, _END, updated
        )

    def _query(self, conn: Conn, what: str, has_lower: bool) -> bytes:
        found = self._cache.get((what, has_lower))
        if found is None:
            width = len(self.key.columns)
            lower = self.key.placeholders(1) if has_lower else None
            upper = self.key.placeholders(1 + width if has_lower else 1)
            if what == "count":
                query = self.key.count(lower, upper)
            else:
                query = self._batch(lower, upper, sql.SQL(f"${1 + (2 * width if has_lower else width)}"))
            found = self._cache[(what, has_lower)] = tagged(query).as_bytes(conn)
        return found

    def _run(self, conn: Conn, what: str, lower: Key | None, upper: Key, *more: str) -> Any:
        cur = psycopg.RawCursor(conn)
        cur.execute(self._query(conn, what, lower is not None), [*(lower or []), *upper, *more])
        return cur

    def batch(
        self, conn: Conn, lower: Key | None, upper: Key, size: int, settle: bool = False
    ) -> tuple[Key, int, list[int]] | None:
        """Update the next ``size`` rows after ``lower`` (up to ``upper``): the last key written, the
        rows scanned, and the rows each backfill changed; None when no row is left. With
        ``settle``, the range the batch before wrote is read first (see the module text); both go
        in one round trip, in the caller's transaction, whose COMMIT follows with the checkpoint."""
        if settle and self._written is not None:
            self._run(conn, "count", *self._written)
        self._written = None
        row = self._run(conn, "batch", lower, upper, str(size)).fetchone()
        if row is None or not row[1]:
            return None
        end = list(row[0])
        self._written = (lower, end)
        return end, int(row[1]), [int(n or 0) for n in row[2:]]

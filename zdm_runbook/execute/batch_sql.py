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
from psycopg import Pipeline, sql

from zdm_runbook.core.connect import redact, tagged
from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.execute.keyset import Key, TableKey
from zdm_runbook.execute.walk import Walk

Conn = psycopg.Connection[Any]


class BatchStatements:
    """The key range's end, the rows left, and the UPDATE of one pass (:class:`Walk`), composed
    once per shape (a first batch has no lower bound) and cached as bytes."""

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

    def _query(self, conn: Conn, what: str, has_lower: bool) -> bytes:
        found = self._cache.get((what, has_lower))
        if found is None:
            width = len(self.key.columns)
            lower = self.key.placeholders(1) if has_lower else None
            upper = self.key.placeholders(1 + width if has_lower else 1)
            if what == "end":
                after = sql.SQL(f"${1 + (2 * width if has_lower else width)}")
                query = self.key.batch_end(lower, upper, after)
            elif what == "count":
                query = self.key.count(lower, upper)
            elif what == "counts":
                query = self.walk.counts(self.key, lower, upper)
            else:
                query = self.walk.update(self.key, lower, upper)
            found = self._cache[(what, has_lower)] = tagged(query).as_bytes(conn)
        return found

    def _run(self, conn: Conn, what: str, lower: Key | None, upper: Key, *more: str) -> Any:
        cur = psycopg.RawCursor(conn)
        cur.execute(self._query(conn, what, lower is not None), [*(lower or []), *upper, *more])
        return cur

    def end(self, conn: Conn, lower: Key | None, upper: Key, size: int, settle: bool = False) -> Key | None:
        """The key ``size`` rows after ``lower`` (None: fewer than ``size`` rows are left); first,
        with ``settle``, in the same round trip, the range the last batch wrote is read (see the
        module text)."""
        if settle and self._written is not None:
            self._run(conn, "count", *self._written)
        self._written = None
        row = self._run(conn, "end", lower, upper, str(size - 1)).fetchone()
        return list(row[0]) if row is not None else None

    def left(self, conn: Conn, lower: Key | None, upper: Key) -> int:
        """The rows left in ``(lower, upper]``: the last batch's size."""
        row = self._run(conn, "count", lower, upper).fetchone()
        return int(row[0]) if row and row[0] else 0

    def update(self, conn: Conn, lower: Key | None, upper: Key, pipe: Pipeline | None = None) -> list[int]:
        """Update the range; the rows each backfill changed (with several, counted just before, in
        the batch's transaction: a row an app changes in between is the dual-write's, not ours).
        In pipeline mode (``pipe``) the UPDATE is synced here, so its time and errors are the batch's."""
        counted = self._run(conn, "counts", lower, upper) if len(self.walk.specs) > 1 else None
        cur = self._run(conn, "update", lower, upper)
        self._written = (lower, upper)
        if pipe is not None:
            pipe.sync()
        if counted is None:
            return [cur.rowcount]
        row = counted.fetchone()
        return [int(n) for n in row] if row else [0] * len(self.walk.specs)

"""Measure what a SQL file does on a real server, statement by statement, instead of guessing.

The file is replayed, in order, on a **scratch database** that the caller owns: its statements
really run and commit there, so a ``SET`` that takes effect (or does not), a CHECK validated
earlier, an object created earlier, ``BEGIN … COMMIT`` and ``CONCURRENTLY`` are all real. For
each statement it records what PostgreSQL did:

- **locks**: the relation locks the session holds once the statement is done, read from
  ``pg_locks`` by a second session while the transaction is still open. A statement outside the
  file's own transaction block runs in a transaction of its own (what autocommit means), so its
  locks can be read before it commits. A statement that may not run in a block (``CONCURRENTLY``,
  SQLSTATE 25001), or a CALL or DO that commits (2D000), runs alone, its locks sampled by the
  second session while it runs;
- **rewrites**: relations whose ``relfilenode`` changed (a table or index file rebuilt);
- **scans**: sequential and index scans and the rows they read, from the transaction's own
  ``pg_stat_xact_user_tables`` (counted also on an empty table);
- **rows written** by a data statement, and the **lock_timeout** in effect when it started;
- **failure**: the SQLSTATE of a statement that fails as written.

Nothing here decides safe or unsafe: :mod:`zdm_runbook.lint.verdicts` reads the measurements.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import ast, parse_sql
from psycopg import pq, sql

from zdm_runbook.lint.analysis import LOCK_MODES, analyze
from zdm_runbook.lint.placeholders import NUMBERED, PLACEHOLDER, numbered

Conn = psycopg.Connection[Any]
NOT_IN_BLOCK = "25001"  # active_sql_transaction: "cannot run inside a transaction block"
# invalid_transaction_termination: a CALL or DO that commits, as it may at the top level only
ENDS_ITS_OWN = "2D000"
# An old-app statement failing with these says more about the rows present (a shadow copy has none)
# than about the migration: a foreign key's missing parent, a duplicate key.
ROW_DEPENDENT = frozenset({"23503", "23505"})
# An old-app statement: a name, its SQL (psycopg placeholders) and sample values.
AppStatement = tuple[str, str, Mapping[str, Any] | None]
_CONTROL = (ast.TransactionStmt, ast.VariableSetStmt, ast.VariableShowStmt)
_NEEDS_BLOCK = (ast.LockStmt,)  # fails outside a block: run it as written, never wrapped
_IN_BLOCK = (
    pq.TransactionStatus.INTRANS,
    pq.TransactionStatus.INERROR,
)  # fails outside a block: run it as written, never wrapped

_RELATIONS = """
SELECT c.oid, c.oid::regclass::text, c.relfilenode, c.relkind::text,
       coalesce(i.indrelid, t.oid, c.oid)::regclass::text
FROM pg_class c
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class t ON t.reltoastrelid = c.oid
WHERE c.relnamespace <> 'pg_catalog'::regnamespace
  AND c.relnamespace <> 'information_schema'::regnamespace
  AND (c.relnamespace <> 'pg_toast'::regnamespace OR t.oid IS NOT NULL)
"""
_STATS = """
SELECT relid::regclass::text, seq_scan, coalesce(idx_scan, 0), seq_tup_read, coalesce(idx_tup_fetch, 0),
       pg_stat_get_xact_blocks_fetched(relid)
FROM pg_stat_xact_user_tables
"""
_LOCKS = (
    "SELECT relation, mode FROM pg_locks WHERE pid = %s AND locktype = 'relation' AND granted"
    " AND relation IS NOT NULL AND mode <> 'SIReadLock'"  # SERIALIZABLE's predicate locks block nothing
)


@dataclass
class Measured:
    """What one statement did. Relations are named as ``regclass`` prints them; an index, a TOAST
    table and the table itself all count for the table they belong to."""

    index: int  # 1-based, in the file
    text: str
    kind: str  # the statement's node, e.g. AlterTableStmt
    in_block: bool  # it ran inside the file's own BEGIN … COMMIT
    lock_timeout: str  # in effect when it started ('0' = wait forever)
    statement_timeout: str
    sqlstate: str | None = None  # it failed as written
    error: str | None = None
    # relation (table, index, view, ...) that existed before the statement -> strongest mode held
    # after it; a relation the statement itself created is nobody else's yet and is left out
    locks: dict[str, str] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # a locked index -> its table
    kinds: dict[str, str] = field(default_factory=dict)  # a locked relation -> its relkind
    locks_observed: bool = True  # False: it ran alone and no lock was seen while it ran
    rewritten: set[str] = field(default_factory=set)  # tables whose file (or an index's) was rebuilt
    scans: dict[str, int] = field(default_factory=dict)  # table -> scans started
    rows_read: dict[str, int] = field(default_factory=dict)  # table -> rows those scans read
    blocks_read: dict[str, int] = field(default_factory=dict)  # table -> heap blocks read (ANALYZE too)
    rows_written: int | None = None
    table_rows: dict[str, int] = field(default_factory=dict)  # rows of the tables it touched (before)
    created: set[str] = field(default_factory=set)  # tables it created
    app_broken: list[str] = field(default_factory=list)  # old-app statements that stopped working


@dataclass
class _Catalog:
    """Relations of the scratch database: oid -> (name, filenode, kind, owning table)."""

    rows: dict[int, tuple[str, int, str, str]]

    @classmethod
    def read(cls, conn: Conn) -> _Catalog:
        return cls(
            {int(r[0]): (str(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in conn.execute(_RELATIONS)}
        )

    def note_lock(self, m: Measured, oid: int, mode: str) -> None:
        """Record a lock on ``oid`` if the relation existed before the statement."""
        row = self.rows.get(oid)
        if row is not None:
            m.locks[row[0]] = _stronger(m.locks.get(row[0]), mode)
            m.kinds[row[0]] = row[2]
            if row[3] != row[0]:
                m.owner[row[0]] = row[3]


def _stronger(a: str | None, b: str) -> str:
    return b if a is None or LOCK_MODES.index(b) > LOCK_MODES.index(a) else a


def split(text: str) -> list[tuple[str, Any]]:
    """``(statement text, parsed node)`` per statement, comments before a statement included."""
    out = []
    for raw in parse_sql(text):
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        out.append((text[start:end].strip(), raw.stmt))
    return out


class Probe:
    """Replays statements on a scratch database and measures each (see the module's docstring).

    ``dsn`` must name a database that may be changed: the statements commit there."""

    def __init__(self, dsn: str, statement_timeout_s: float = 30.0, app: Sequence[AppStatement] = ()) -> None:
        self.conn: Conn = psycopg.connect(dsn, autocommit=True, application_name="zdm lint probe")
        self.watch: Conn = psycopg.connect(dsn, autocommit=True, application_name="zdm lint watch")
        self.pid = self.conn.info.backend_pid
        self.limit_s = statement_timeout_s  # a statement running longer is cancelled (57014)
        self.index = 0
        self.app = list(app)
        self.app_failing: dict[str, str] = self._app_check() if self.app else {}

    def close(self) -> None:
        for c in (self.conn, self.watch):
            c.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def in_block(self) -> bool:
        return self.conn.info.transaction_status in (
            pq.TransactionStatus.INTRANS,
            pq.TransactionStatus.INERROR,
        )

    def run_file(self, text: str) -> list[Measured]:
        """Every statement of ``text`` in order; a failed one is recorded and the file goes on (in a
        failed block, PostgreSQL refuses the rest until ROLLBACK, and that is recorded too)."""
        return [self.run(sql_text, node) for sql_text, node in split(text)]

    def run(self, sql_text: str, node: Any) -> Measured:
        self.index += 1
        kind = type(node).__name__
        in_block = self.in_block
        timeouts = (
            self._timeouts()
            if self.conn.info.transaction_status != pq.TransactionStatus.INERROR
            else ("?", "?")
        )
        m = Measured(self.index, sql_text, kind, in_block, *timeouts)
        if isinstance(node, _CONTROL) or (not in_block and isinstance(node, _NEEDS_BLOCK)):
            if self._execute(m, sql_text) and isinstance(node, ast.TransactionStmt):
                self._app(m)  # a COMMIT is when the app sees what the block did
            return m
        wrap = not in_block
        if wrap:
            self.conn.execute("BEGIN")
        before_cat = _Catalog.read(self.conn)
        self._count(m, before_cat)  # before the statistics are read: counting scans too
        before_stats = self._stats()
        ok = self._execute(m, sql_text)
        if not ok and wrap and m.sqlstate in (NOT_IN_BLOCK, ENDS_ITS_OWN):
            self.conn.execute("ROLLBACK")
            return self._alone(m, sql_text)
        if ok:
            self._measure(m, before_cat, before_stats)
        if wrap:
            self.conn.execute("COMMIT" if ok else "ROLLBACK")
        if ok:
            self._app(m)
        return m

    def _app(self, m: Measured) -> None:
        """Old-app statements that worked before and fail now are this statement's doing. Inside
        the file's own block nothing is checked: the app sees the block's work at its COMMIT."""
        if not self.app or self.in_block:
            return
        failing = self._app_check()
        for name, error in failing.items():
            if name not in self.app_failing:
                m.app_broken.append(f"{name}: {error}")
        self.app_failing = failing

    def _app_check(self) -> dict[str, str]:
        """Run each old-app statement with its sample values and undo it: name -> error."""
        failing = {}
        in_block = self.in_block
        for name, text, params in self.app:
            self.conn.execute("SAVEPOINT zdm_probe_app" if in_block else "BEGIN")
            try:
                if params is None and (PLACEHOLDER.search(text) or NUMBERED.search(text)):
                    # No sample values: prepared only (names gone, types changed), not run.
                    self.conn.execute(b"PREPARE zdm_probe_app AS " + numbered(text).encode())
                    self.conn.execute("DEALLOCATE zdm_probe_app")
                else:
                    self.conn.execute(text.encode(), params or None)
            except psycopg.Error as exc:
                if exc.sqlstate not in ROW_DEPENDENT:
                    failing[name] = f"{str(exc).strip().splitlines()[0]} [SQLSTATE {exc.sqlstate}]"
            self.conn.execute("ROLLBACK TO SAVEPOINT zdm_probe_app" if in_block else "ROLLBACK")
        return failing

    def _execute(self, m: Measured, sql_text: str) -> bool:
        # Cancelled from outside rather than by statement_timeout, so that the setting the file
        # leaves in effect is the file's own.
        guard = threading.Timer(self.limit_s, self.conn.cancel_safe)
        guard.start()
        try:
            cur = self.conn.execute(sql_text.encode())
        except psycopg.Error as exc:
            m.sqlstate = exc.sqlstate or "?????"
            m.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return False
        finally:
            guard.cancel()
        if (
            cur.rowcount is not None
            and cur.rowcount >= 0
            and m.kind in ("UpdateStmt", "DeleteStmt", "InsertStmt")
        ):
            m.rows_written = cur.rowcount
        return True

    def _alone(self, m: Measured, sql_text: str) -> Measured:
        """A statement that may not run in a block: run as written, locks sampled while it runs."""
        m.sqlstate = m.error = None
        before_cat = _Catalog.read(self.conn)
        seen: dict[int, str] = {}
        with self._sampling(seen):
            ok = self._execute(m, sql_text)
        after = _Catalog.read(self.conn)
        if ok:
            for oid, mode in seen.items():
                before_cat.note_lock(m, oid, mode)
            # Sampling may miss a lock held for a moment: PostgreSQL's documented lock is the floor.
            documented = _documented_locks(sql_text, {name for name, *_ in before_cat.rows.values()})
            m.locks_observed = all(m.locks.get(r) == mode for r, mode in documented.items())
            for relation, mode in documented.items():
                m.locks[relation] = _stronger(m.locks.get(relation), mode)
            self._files(m, before_cat, after)
        return m

    @contextmanager
    def _sampling(self, seen: dict[int, str]) -> Iterator[None]:
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for oid, mode in self.watch.execute(_LOCKS, [self.pid]).fetchall():
                    seen[int(oid)] = _stronger(seen.get(int(oid)), str(mode))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _measure(self, m: Measured, before: _Catalog, before_stats: dict[str, tuple[int, ...]]) -> None:
        after = _Catalog.read(self.conn)
        for oid, mode in self.watch.execute(_LOCKS, [self.pid]).fetchall():
            before.note_lock(m, int(oid), str(mode))
        self._files(m, before, after)
        for table, now in self._stats().items():
            was = before_stats.get(table, (0, 0, 0, 0, 0))
            scans = (now[0] - was[0]) + (now[1] - was[1])
            if scans > 0:
                m.scans[table] = scans
                m.rows_read[table] = (now[2] - was[2]) + (now[3] - was[3])
            if now[4] > was[4]:
                m.blocks_read[table] = now[4] - was[4]

    def _count(self, m: Measured, cat: _Catalog) -> None:
        """Rows of every table before the statement runs (a DELETE or TRUNCATE leaves none)."""
        if self.conn.info.transaction_status == pq.TransactionStatus.INERROR:
            return
        populated = {  # a materialized view made WITH NO DATA (as pg_dump makes them) cannot be read
            int(oid)
            for (oid,) in self.conn.execute("SELECT oid FROM pg_class WHERE relkind = 'm' AND relispopulated")
        }
        tables = sorted(
            {name for oid, (name, _, kind, _) in cat.rows.items() if kind == "r" or oid in populated}
        )
        if not tables:
            return
        counts = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}, count(*) FROM {}").format(sql.Literal(t), sql.SQL(t)) for t in tables
        )
        # In a savepoint rolled back at once: its AccessShareLocks go with it, and the statistics
        # are read afterwards, so the counting scans are not the statement's.
        self.conn.execute("SAVEPOINT zdm_probe_count")
        try:
            m.table_rows.update({str(t): int(n) for t, n in self.conn.execute(counts).fetchall()})
        finally:
            self.conn.execute("ROLLBACK TO SAVEPOINT zdm_probe_count")

    @staticmethod
    def _files(m: Measured, before: _Catalog, after: _Catalog) -> None:
        for oid, (name, node, kind, table) in after.rows.items():
            old = before.rows.get(oid)
            if old is None:
                if kind in ("r", "p", "m"):
                    m.created.add(name)
            elif old[1] != node and kind != "S":  # a sequence's new file is its one row (ALTER SEQUENCE)
                m.rewritten.add(table)

    def _stats(self) -> dict[str, tuple[int, ...]]:
        return {str(r[0]): tuple(int(x) for x in r[1:]) for r in self.conn.execute(_STATS)}

    def _timeouts(self) -> tuple[str, str]:
        row = self.conn.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        ).fetchone()
        return (str(row[0]), str(row[1])) if row else ("?", "?")


def _documented_locks(sql_text: str, existing: set[str]) -> dict[str, str]:
    """The lock each relation gets by the rules (:mod:`zdm_runbook.lint.analysis`), for a statement
    that ran alone too fast to be seen (``locks_observed`` says whether sampling saw them all)."""
    out: dict[str, str] = {}
    for a in analyze(sql_text):
        for e in a.effects:
            name = next((n for n in existing if n == e.relation or n.endswith("." + e.relation)), None)
            if name:
                out[name] = _stronger(out.get(name), e.lock)
    return out

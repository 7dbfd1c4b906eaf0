"""Who blocks one session, sampled while it waits: the evidence a lock-timeout report needs.

When ``lock_timeout`` fires, the waiting is over and ``pg_blocking_pids`` of the step's session is
empty again. So a :class:`BlockerWatch` polls from a second session while the step runs and keeps
what it saw last: the blocking pids with their application, state, transaction age, query and the
lock modes they hold on the contested relation, plus how long the step waited.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from zdm_runbook.core.connect import redact
from zdm_runbook.core.durations import human_seconds
from zdm_runbook.inspect import locks as lk
from zdm_runbook.spec.model import Table

Conn = psycopg.Connection[Any]
Blocker = dict[str, Any]

_BLOCKERS = """
WITH w AS (
  SELECT locktype, relation, mode, extract(epoch FROM now() - waitstart)::float8 AS wait_s, waitstart
  FROM pg_locks WHERE pid = %(pid)s AND NOT granted LIMIT 1)
SELECT w.wait_s, w.waitstart, w.relation::regclass::text AS relation, w.mode AS wanted,
       b.pid, b.application_name, b.usename AS user, b.state,
       round(extract(epoch FROM now() - b.xact_start)::numeric, 3)::float8 AS xact_age_s,
       left(b.query, 500) AS query, b.wait_event_type = 'Lock' AS waiting,
       (SELECT array_agg(DISTINCT l.mode) FROM pg_locks l
         WHERE l.pid = b.pid AND l.granted AND l.relation = w.relation AND l.mode <> 'SIReadLock') AS holds
FROM w
LEFT JOIN LATERAL unnest(pg_blocking_pids(%(pid)s)) AS bp(pid) ON true
LEFT JOIN pg_stat_activity b ON b.pid = bp.pid
"""

_FIELDS = ("pid", "application_name", "user", "state", "xact_age_s", "query", "waiting", "holds")


def describe(blocker: Blocker) -> str:
    """``pid 4242 (billing) idle in transaction, transaction 12 min, holds AccessShareLock: <query>``."""
    app = blocker.get("application_name") or "no application_name"
    text = f"pid {blocker.get('pid')} ({app}) {blocker.get('state') or '?'}"
    if blocker.get("xact_age_s") is not None:
        text += f", transaction {human_seconds(blocker['xact_age_s'])}"
    holds = blocker.get("holds") or []
    if holds:
        text += f", holds {'+'.join(sorted(holds))}"
    elif blocker.get("waiting"):
        text += ", queued ahead for a conflicting lock"
    query = " ".join(str(blocker.get("query") or "").split())
    if query:
        text += f": {query[:160]}"
    return redact(text)


class BlockerWatch:
    """Samples, every ``interval`` seconds from ``conn``, what session ``pid`` waits for and who blocks it.

    Use as a context manager around one attempt. ``blockers`` is the last non-empty sample;
    ``lock_wait_s`` adds up the distinct lock waits seen (each by its ``waitstart``).
    """

    def __init__(self, conn: Conn, pid: int, interval: float = 0.1) -> None:
        self.conn, self.pid, self.interval = conn, pid, interval
        self.blockers: list[Blocker] = []
        self.wanted: str | None = None
        self.error: str | None = None
        self._waits: dict[Any, float] = {}
        self._last_wait: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"zdm-watch-{pid}", daemon=True)

    @property
    def lock_wait_s(self) -> float:
        return sum(self._waits.values())

    def __enter__(self) -> BlockerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except psycopg.Error as exc:  # the watch is evidence, never a reason to fail the step
                self.error = redact(str(exc))
                return
            self._stop.wait(self.interval)

    def sample(self) -> None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            records = cur.execute(_BLOCKERS, {"pid": self.pid}).fetchall()
        if not records:
            return
        first = records[0]
        self._last_wait = first["waitstart"]
        self._waits[self._last_wait] = max(self._waits.get(self._last_wait, 0.0), first["wait_s"] or 0.0)
        if first["relation"]:
            self.wanted = f"{first['wanted']} on {first['relation']}"
        found = [{k: r[k] for k in _FIELDS} | {"relation": r["relation"]} for r in records if r["pid"]]
        if found:
            self.blockers = found

    def close_wait(self, timed_out_after: float | None) -> None:
        """Count the last wait as ``timed_out_after`` seconds (the server ended it at lock_timeout)."""
        if timed_out_after is not None:
            self._waits[self._last_wait] = max(self._waits.get(self._last_wait, 0.0), timed_out_after)


def holders(conn: Conn, tables: Iterable[Table], exclude_pid: int) -> list[Blocker]:
    """Sessions holding a lock on ``tables`` now: the fallback when no sample caught the wait."""
    frame = lk.table_locks(conn, tables)
    frame = frame[frame.granted & (frame.pid != exclude_pid)]
    out: list[Blocker] = []
    for pid, rows in frame.groupby("pid"):
        r = rows.iloc[0]
        out.append(
            {
                "pid": int(str(pid)),
                "application_name": r.application_name,
                "user": None,
                "state": r.state,
                "xact_age_s": None if r.xact_age_s is None or r.xact_age_s != r.xact_age_s else r.xact_age_s,
                "query": r.query,
                "waiting": False,
                "holds": sorted(set(rows["mode"])),
                "relation": r.relation,
                "seen": "just after the timeout",
            }
        )
    return out

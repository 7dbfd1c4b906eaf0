"""Health holds: why a backfill waits before its next batch, read from the server in one query.

A hold pauses the backfill and lifts by itself when the condition clears; the engine shows it in
its progress (``holding: …``) and writes it to the ledger (``zdm.backfills.hold``), so
``zdm backfill status`` and a second notebook see it too. In order:

- ``paused``: an operator said so (``zdm backfill pause``).
- a vacuum of the table is running (GitLab's ``AutovacuumActiveOnTable``): a backfill writes a
  dead tuple per row it updates, which the vacuum then has to chase; an anti-wraparound
  autovacuum must never be fought, and a DDL later in the change would queue behind it.
- a replica's replay lag is over ``max_replay_lag``. A replica that has replayed everything counts
  as 0: ``pg_stat_replication.replay_lag`` keeps its last measured value while no new WAL comes
  (measured on 18.6), so a held backfill, writing nothing, would otherwise wait forever.
- the server's WAL rate, averaged since the last check under it, is over ``max_wal_mb_per_s`` (0:
  no cap; :mod:`.wal_pace` keeps the average and paces the batches so that this is rare).
- sessions queue for a lock on the table: a DDL (ours or someone's) is waiting, and every batch
  would hold it up longer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.inspect.locks import REPLAY_LAG_S

Conn = psycopg.Connection[Any]

_HEALTH = sql.SQL("""
SELECT (SELECT count(*) FROM pg_locks l WHERE l.relation = %(oid)s::int8::oid AND NOT l.granted),
       (SELECT max({}) FROM pg_stat_replication),
       (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = current_database()
          AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
          AND a.application_name NOT LIKE 'zdm_runbook%%'
          AND (a.state <> 'idle' OR a.state_change > now() - interval '1 second')),
       (SELECT string_agg(format('%%s (pid %%s, %%s)',
                 CASE WHEN a.backend_type <> 'autovacuum worker' THEN 'VACUUM'
                      WHEN a.query LIKE '%%to prevent wraparound%%' THEN 'an anti-wraparound autovacuum'
                      ELSE 'autovacuum' END, v.pid, v.phase), '; ')
          FROM pg_stat_progress_vacuum v LEFT JOIN pg_stat_activity a ON a.pid = v.pid
         WHERE v.relid = %(oid)s::int8::oid),
       (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8
""").format(REPLAY_LAG_S)


@dataclass(frozen=True)
class Health:
    """One reading: lock queue on the table, replica lag, app sessions busy, vacuums, WAL position."""

    queued: int
    replay_lag_s: float | None
    busy_sessions: int
    vacuum: str | None
    wal_bytes: float
    at: float


def read_health(conn: Conn, table_oid: int) -> Health:
    """The server's state as the holds read it, for the table of ``table_oid``."""
    row = conn.execute(_HEALTH, {"oid": table_oid}).fetchone()
    queued, lag, busy, vacuum, wal = row if row else (0, None, 0, None, 0.0)
    return Health(int(queued or 0), lag, int(busy or 0), vacuum, float(wal or 0.0), time.monotonic())


@dataclass(frozen=True)
class Hold:
    """Why the backfill waits: ``text`` for its progress and the ledger (with pids, lag, rates);
    ``kind``, the same for every hold of its sort, for the summary's time held per kind."""

    kind: str
    text: str


def hold_reason(
    now: Health,
    table: str,
    *,
    paused: bool,
    max_replay_lag: float,
    wal_rate: float | None = None,
    max_wal_mb_per_s: int = 0,
) -> Hold | None:
    """Why the backfill must wait now (the first reason that applies), or None. ``wal_rate``: the
    average WAL rate (MB/s) when :class:`~.wal_pace.WalPace` found it over ``max_wal_mb_per_s``."""
    if paused:
        return Hold("paused", "paused (zdm backfill resume lifts it)")
    if now.vacuum:
        return Hold("a vacuum of the table", f"{now.vacuum} is vacuuming {table}")
    if now.replay_lag_s is not None and now.replay_lag_s > max_replay_lag:
        return Hold("replica lag", f"replica lag {now.replay_lag_s:.0f} s > {max_replay_lag:g} s")
    if wal_rate is not None:
        return Hold("the WAL cap", f"WAL written at {wal_rate:.0f} MB/s > {max_wal_mb_per_s} MB/s")
    if now.queued:
        return Hold("a lock queue on the table", f"{now.queued} session(s) queued for a lock on {table}")
    return None

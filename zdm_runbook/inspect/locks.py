"""Live lock inspection: who holds and who waits, as pandas DataFrames a DBA can read.

Every view reads ``pg_stat_activity`` and ``pg_locks`` of the current database at one moment and
leaves out the inspecting session itself. Lock modes keep PostgreSQL's own names
(``AccessExclusiveLock``) so its documentation on lock conflicts applies directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from zdm_runbook.core.durations import human_seconds
from zdm_runbook.lint.catalog_facts import regclass_text
from zdm_runbook.spec.model import Table

Conn = psycopg.Connection[Any]

# One row per session of this database (client backends and autovacuum), ages in seconds.
_ACTIVITY = """
SELECT a.pid, a.usename AS user, a.application_name, a.backend_type, a.state,
       a.wait_event_type, a.wait_event,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       extract(epoch FROM now() - a.state_change)::float8 AS state_age_s,
       left(a.query, 1000) AS query,
       pg_blocking_pids(a.pid) AS blocked_by
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.backend_type IN ('client backend', 'autovacuum worker')
ORDER BY a.pid
"""

# Relation and row-lock entries of this database; a row lock waits on a transaction id.
_LOCKS = """
SELECT l.pid, l.locktype, l.mode, l.granted,
       CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text END AS relation,
       l.relation::int8 AS relation_oid,
       l.transactionid::text AS transactionid,
       extract(epoch FROM now() - l.waitstart)::float8 AS wait_s
FROM pg_locks l
WHERE l.pid <> pg_backend_pid()
  AND l.mode <> 'SIReadLock'  -- SERIALIZABLE's predicate locks: they block no one (a DDL neither)
  AND (l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       OR l.locktype IN ('transactionid', 'virtualxid'))
"""

_AUTOVACUUM = """
SELECT a.pid, p.relid::regclass::text AS "table", p.phase,
       a.query LIKE '%(to prevent wraparound)%' AS wraparound,
       extract(epoch FROM now() - a.xact_start)::float8 AS running_s,
       p.heap_blks_total, p.heap_blks_scanned
FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a USING (pid)
WHERE p.datname = current_database()
ORDER BY a.pid
"""

# A row of pg_stat_replication's replay lag in seconds. A standby that has replayed everything is
# 0: replay_lag keeps its last measured value while no new WAL comes (measured on 18.6).
REPLAY_LAG_S = sql.SQL(
    "(CASE WHEN replay_lsn >= pg_current_wal_lsn() THEN 0 ELSE extract(epoch FROM replay_lag) END)::float8"
)
_REPLICATION = sql.SQL("""
SELECT application_name, client_addr::text AS client_addr, state, sync_state,
       {} AS replay_lag_s,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::int8 AS replay_lag_bytes
FROM pg_stat_replication ORDER BY application_name
""").format(REPLAY_LAG_S)


def rows(conn: Conn, query: str | sql.Composed, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """The rows of ``query`` as dicts keyed by column name."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def frame(records: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows (as :func:`rows` and the ``*_rows`` functions return them) as a DataFrame with ``columns``."""
    return pd.DataFrame(records, columns=list(columns))


_SESSION_COLUMNS = (
    "pid",
    "user",
    "application_name",
    "backend_type",
    "state",
    "wait_event_type",
    "wait_event",
    "xact_age_s",
    "state_age_s",
    "query",
    "blocked_by",
)
_LOCK_COLUMNS = ("pid", "locktype", "mode", "granted", "relation", "relation_oid", "transactionid", "wait_s")


def sessions(conn: Conn) -> pd.DataFrame:
    """Every other session of this database: state, wait, ages and the pids blocking it."""
    return frame(rows(conn, _ACTIVITY), _SESSION_COLUMNS)


def locks(conn: Conn) -> pd.DataFrame:
    """Every lock entry of other sessions in this database (relation, row/transaction, granted or not)."""
    return frame(rows(conn, _LOCKS), _LOCK_COLUMNS)


def _wants(lock_rows: list[dict[str, Any]], pid: int) -> str:
    """What a waiting pid waits for, in words: ``AccessExclusiveLock on public.orders``."""
    row = next((r for r in lock_rows if r["pid"] == pid and not r["granted"]), None)
    if row is None:
        return ""
    if row["relation"]:
        return f"{row['mode']} on {row['relation']}"
    if row["locktype"] == "transactionid":
        return f"a row lock (transaction {row['transactionid']})"
    return f"{row['mode']} ({row['locktype']})"


_TREE_COLUMNS = (
    "tree",
    "pid",
    "depth",
    "root",
    "blocked_by",
    "waits_for",
    "application_name",
    "state",
    "xact_age_s",
    "query",
)


def blocking_tree(conn: Conn) -> pd.DataFrame:
    """Blocked sessions under the sessions blocking them, roots first (``pg_blocking_pids``).

    ``tree`` is an indented label per session; ``depth`` 0 is a root blocker. Empty when nobody waits.
    """
    acts = {r["pid"]: r for r in rows(conn, _ACTIVITY)}
    lock_rows = rows(conn, _LOCKS)
    children: dict[int, list[int]] = {}
    for r in acts.values():
        for blocker in r["blocked_by"] or []:
            children.setdefault(blocker, []).append(r["pid"])
    blocked = {pid for kids in children.values() for pid in kids}
    out: list[dict[str, Any]] = []
    seen: set[int] = set()

    def visit(pid: int, depth: int, root: int) -> None:
        if pid in seen:
            return
        seen.add(pid)
        r = acts.get(pid, {})
        app = r.get("application_name") or "?"
        state = r.get("state") or "(not in this database)"
        wants = _wants(lock_rows, pid)
        label = f"{'   ' * max(depth - 1, 0)}{'└─ ' if depth else ''}{pid} ({app}) {state}"
        if r.get("xact_age_s") is not None:
            label += f", transaction {human_seconds(r['xact_age_s'])}"
        if wants:
            label += f", waits for {wants}"
        out.append(
            {
                "tree": label,
                "pid": pid,
                "depth": depth,
                "root": root,
                "blocked_by": list(r.get("blocked_by") or []),
                "waits_for": wants,
                "application_name": app,
                "state": state,
                "xact_age_s": r.get("xact_age_s"),
                "query": r.get("query") or "",
            }
        )
        for kid in sorted(children.get(pid, [])):
            visit(kid, depth + 1, root)

    for root in sorted(pid for pid in children if pid not in blocked):
        visit(root, 0, root)
    for pid in sorted(children):  # a cycle (a deadlock about to be broken) has no root
        visit(pid, 0, pid)
    return frame(out, _TREE_COLUMNS)


def waiting_sessions(conn: Conn) -> pd.DataFrame:
    """Sessions waiting for a lock now: what they wait for, since when, and who blocks them."""
    acts = {r["pid"]: r for r in rows(conn, _ACTIVITY)}
    lock_rows = rows(conn, _LOCKS)
    out = [
        {
            "pid": w["pid"],
            "application_name": acts[w["pid"]]["application_name"],
            "waits_for": _wants(lock_rows, w["pid"]),
            "wait_s": w["wait_s"],
            "blocked_by": list(acts[w["pid"]]["blocked_by"] or []),
            "query": acts[w["pid"]]["query"],
        }
        for w in lock_rows
        if not w["granted"] and w["pid"] in acts
    ]
    return frame(out, ("pid", "application_name", "waits_for", "wait_s", "blocked_by", "query"))


def long_running_rows(conn: Conn, threshold_s: float = 60.0) -> list[dict[str, Any]]:
    """Client sessions whose transaction is at least ``threshold_s`` old (see :func:`long_running`)."""
    return [
        r
        for r in rows(conn, _ACTIVITY)
        if r["backend_type"] == "client backend" and (r["xact_age_s"] or 0.0) >= threshold_s
    ]


LONG_RUNNING_COLUMNS = ("pid", "user", "application_name", "state", "xact_age_s", "state_age_s", "query")


def long_running(conn: Conn, threshold_s: float = 60.0) -> pd.DataFrame:
    """Sessions whose transaction is older than ``threshold_s``, idle in transaction or not.

    They hold locks and snapshots: a DDL queues behind their locks, and CREATE INDEX CONCURRENTLY
    waits for their snapshots.
    """
    return frame(long_running_rows(conn, threshold_s), LONG_RUNNING_COLUMNS)


def resolve_tables(conn: Conn, tables: Iterable[Table | str]) -> dict[str, int | None]:
    """``{name: oid or None}`` per table. A :class:`Table` (a spec's) is its schema and name exactly
    as written, ``Billing.Invoice`` included. A string, as a DBA types it into ``zdm locks``, is read
    as SQL reads a name (``orders``, one on the search path, ``"Billing"."Invoice"``), and, when that
    names nothing, as the spec would read it: ``Billing.Invoice`` is found either way."""
    out: dict[str, int | None] = {}
    for t in tables:
        name = str(t)
        exact = regclass_text((t.schema, t.name)) if isinstance(t, Table) else _exact(name)
        first = name if not isinstance(t, Table) else exact
        row = conn.execute(
            "SELECT r::oid::int8, r::text FROM coalesce(to_regclass(%s), to_regclass(%s)) r", [first, exact]
        ).fetchone()
        out[row[1] if row and row[1] else name] = row[0] if row else None
    return out


def _exact(name: str) -> str:
    """``name`` as the spec reads it: schema and name exactly as written (no quotes, at most one dot)."""
    parts = name.split(".")
    return name if '"' in name or len(parts) > 2 else regclass_text(tuple(parts))


TABLE_LOCK_COLUMNS = (
    "relation",
    "pid",
    "mode",
    "granted",
    "wait_s",
    "application_name",
    "state",
    "xact_age_s",
    "blocked_by",
    "query",
)


def table_lock_rows(conn: Conn, tables: Iterable[Table | str]) -> list[dict[str, Any]]:
    """Lock entries on ``tables``, holders first, each with its session's details."""
    oids = {oid for oid in resolve_tables(conn, tables).values() if oid is not None}
    acts = {r["pid"]: r for r in rows(conn, _ACTIVITY)}
    out = []
    for lock in rows(conn, _LOCKS):
        if lock["relation_oid"] in oids:
            act = acts.get(lock["pid"], {})
            out.append({c: lock[c] if c in lock else act.get(c) for c in TABLE_LOCK_COLUMNS})
    return sorted(out, key=lambda r: (r["relation"], not r["granted"], r["pid"]))


def table_locks(conn: Conn, tables: Iterable[Table | str]) -> pd.DataFrame:
    """Locks held and queued on the given tables: mode, granted or waiting, and the session's details."""
    return frame(table_lock_rows(conn, tables), TABLE_LOCK_COLUMNS)


VACUUM_COLUMNS = ("pid", "table", "phase", "wraparound", "running_s", "heap_blks_total", "heap_blks_scanned")


def autovacuum_rows(conn: Conn, tables: Iterable[Table | str] | None = None) -> list[dict[str, Any]]:
    found = rows(conn, _AUTOVACUUM)
    if tables is None:
        return found
    names = set(resolve_tables(conn, tables))
    return [r for r in found if r["table"] in names]


def autovacuum(conn: Conn, tables: Iterable[Table | str] | None = None) -> pd.DataFrame:
    """(Auto)vacuum running now, per table; ``wraparound`` ones do not yield their lock to DDL."""
    return frame(autovacuum_rows(conn, tables), VACUUM_COLUMNS)


REPLICA_COLUMNS = (
    "application_name",
    "client_addr",
    "state",
    "sync_state",
    "replay_lag_s",
    "replay_lag_bytes",
)


def replication_rows(conn: Conn) -> list[dict[str, Any]]:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return [] if row and row[0] else rows(conn, _REPLICATION)


def replication_lag(conn: Conn) -> pd.DataFrame:
    """One row per streaming replica of this server with its replay lag; empty without replicas."""
    return frame(replication_rows(conn), REPLICA_COLUMNS)

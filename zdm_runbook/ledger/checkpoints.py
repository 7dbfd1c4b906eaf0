"""Backfill checkpoints in ``zdm.backfills`` and ``zdm.backfill_batches``: where each backfill
stands, every committed batch, and the controls another session may set while it runs.

The engine (:mod:`zdm_runbook.execute.backfill`) calls :func:`record_batch` inside each batch's
own transaction, so the checkpoint commits with the rows it describes or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import psycopg
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]
Key = tuple[Any, ...] | list[Any]


@dataclass(frozen=True)
class Checkpoint:
    """A backfill's ledger row as a resumed run needs it."""

    status: str
    last_key: list[Any] | None
    upper_key: list[Any] | None
    rows_scanned: int
    rows_updated: int


@dataclass(frozen=True)
class Controls:
    """What ``zdm backfill pause|resume|set`` asked of a running backfill (None: the engine decides)."""

    paused: bool
    batch_size: int | None
    pause_ms: int | None


def checkpoint(conn: Conn, change_id: str, step_key: str) -> Checkpoint | None:
    """The backfill's row, or None if it never started."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT status, last_key, upper_key, rows_scanned, rows_updated FROM zdm.backfills"
            " WHERE change_id = %s AND step_key = %s",
            [change_id, step_key],
        ).fetchone()
    return None if row is None else Checkpoint(**row)


def reopen(conn: Conn, change_id: str, step_key: str) -> None:
    """A failed or interrupted backfill runs again from its checkpoint."""
    conn.execute(
        "UPDATE zdm.backfills SET status = 'running', updated_at = now()"
        " WHERE change_id = %s AND step_key = %s AND status IN ('failed', 'interrupted')",
        [change_id, step_key],
    )


def start(
    conn: Conn,
    change_id: str,
    step_key: str,
    table: str,
    key_columns: list[str],
    upper_key: Key | None,
    rows_estimate: int | None,
) -> None:
    """Start (or start over) the backfill's row: no checkpoint yet, counters at zero."""
    conn.execute(
        "INSERT INTO zdm.backfills (change_id, step_key, table_name, key_columns, upper_key,"
        " rows_estimate) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (change_id, step_key) DO UPDATE SET"
        " upper_key = excluded.upper_key, last_key = NULL, rows_estimate = excluded.rows_estimate,"
        " rows_scanned = 0, rows_updated = 0, status = 'running', started_at = now(), updated_at = now(),"
        " finished_at = NULL",
        [change_id, step_key, table, key_columns, upper_key, rows_estimate],
    )


def controls(conn: Conn, change_id: str, step_key: str) -> Controls | None:
    """The controls set on the backfill (None: its row is gone)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT paused, batch_size, pause_ms FROM zdm.backfills WHERE change_id = %s AND step_key = %s",
            [change_id, step_key],
        ).fetchone()
    return None if row is None else Controls(**row)


def record_batch(
    conn: Conn,
    change_id: str,
    step_key: str,
    *,
    lower: Key | None,
    upper: Key,
    rows_scanned: int,
    rows_updated: int,
    batch_size: int,
    seconds: float,
    retries: int,
    throttled_s: float,
) -> psycopg.Cursor[Any]:
    """Advance the checkpoint past ``upper`` and record the batch, in one statement; the returned
    cursor's row is the batch's number.

    Call it inside the batch's transaction. The number is not read here: in pipeline mode the
    engine sends this statement and the COMMIT together, and reads the number after the commit."""
    return conn.execute(
        "WITH advanced AS (UPDATE zdm.backfills SET last_key = %s, rows_scanned = rows_scanned + %s,"
        " rows_updated = rows_updated + %s, batches = batches + 1, updated_at = now()"
        " WHERE change_id = %s AND step_key = %s RETURNING batches)"
        " INSERT INTO zdm.backfill_batches (change_id, step_key, batch, lower_key, upper_key,"
        " rows_scanned, rows_updated, batch_size, seconds, retries, throttled_s)"
        " SELECT %s, %s, batches, %s, %s, %s, %s, %s, %s, %s, %s FROM advanced RETURNING batch",
        [
            upper,
            rows_scanned,
            rows_updated,
            change_id,
            step_key,
            change_id,
            step_key,
            lower,
            upper,
            rows_scanned,
            rows_updated,
            batch_size,
            seconds,
            retries,
            throttled_s,
        ],
    )


def mark_stopped(conn: Conn, change_id: str, step_key: str, status: str = "failed") -> None:
    """A running backfill gave up (``failed``) or was stopped by the operator (``interrupted``):
    what is committed stays, and the next run resumes."""
    if status not in ("failed", "interrupted"):
        raise ValueError(f"a stopped backfill is failed or interrupted, not {status!r}")
    conn.execute(
        "UPDATE zdm.backfills SET status = %s, updated_at = now()"
        " WHERE change_id = %s AND step_key = %s AND status = 'running'",
        [status, change_id, step_key],
    )


def set_hold(conn: Conn, change_id: str, step_key: str, reason: str | None) -> None:
    """Why the backfill waits now (None: it does not); shown by ``zdm backfill status``."""
    conn.execute(
        "UPDATE zdm.backfills SET hold = %s WHERE change_id = %s AND step_key = %s",
        [reason, change_id, step_key],
    )


def mark_done(conn: Conn, change_id: str, step_key: str) -> None:
    conn.execute(
        "UPDATE zdm.backfills SET status = 'done', hold = NULL, finished_at = now(), updated_at = now()"
        " WHERE change_id = %s AND step_key = %s",
        [change_id, step_key],
    )


def control_backfill(
    conn: Conn,
    change_id: str,
    step_key: str | None = None,
    *,
    paused: bool | None = None,
    batch_size: int | None = None,
    pause_ms: int | None = None,
    clear: bool = False,
) -> int:
    """Steer a running backfill from any session: pause or resume it, fix its batch size or pause
    between batches (``clear`` hands both back to the engine). Returns how many backfills it reached."""
    cur = conn.execute(
        "UPDATE zdm.backfills SET paused = coalesce(%(paused)s, paused),"
        " batch_size = CASE WHEN %(clear)s THEN NULL ELSE coalesce(%(size)s, batch_size) END,"
        " pause_ms = CASE WHEN %(clear)s THEN NULL ELSE coalesce(%(pause)s, pause_ms) END"
        " WHERE change_id = %(change)s AND (%(step)s::text IS NULL OR step_key = %(step)s)",
        {
            "paused": paused,
            "clear": clear,
            "size": batch_size,
            "pause": pause_ms,
            "change": change_id,
            "step": step_key,
        },
    )
    return cur.rowcount


def backfills(conn: Conn, change_id: str | None = None) -> pd.DataFrame:
    """The backfills (optionally of one change): progress counters, status and controls."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT change_id, step_key, table_name, status, rows_scanned, rows_updated, rows_estimate,"
            " batches, paused, hold, batch_size, pause_ms, started_at, updated_at, finished_at"
            " FROM zdm.backfills WHERE %(change)s::text IS NULL OR change_id = %(change)s"
            " ORDER BY change_id, step_key",
            {"change": change_id},
        )
        names = [d.name for d in cur.description or ()]
        return pd.DataFrame(cur.fetchall(), columns=names)

"""The ledger: schema ``zdm`` in the target database, the record of what ran and what it waited for.

It is created idempotently and versioned: :data:`VERSIONS` lists each version's statements, and
:func:`ensure` applies the missing ones in order under an advisory lock, so concurrent runs and
later releases converge. Every write is its own short autocommitted statement, outside any step's
transaction, so a rolled-back step still leaves the record of its attempt.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from .connect import redact
from .errors import DatabaseError, ZdmError

Conn = psycopg.Connection[Any]
LOCK_CLASS: Final = 0x7A646D  # "zdm": first key of every advisory lock the ledger takes
SCHEMA: Final = "zdm"
OUTCOMES: Final = (
    "running",
    "applied",
    "skipped",
    "lock_timeout",
    "deadlock",
    "query_canceled",
    "failed",
    "interrupted",
)

_V1 = (
    """CREATE TABLE zdm.changes (
        change_id text PRIMARY KEY,
        description text NOT NULL DEFAULT '',
        plan_sha256 text NOT NULL,
        first_seen timestamptz NOT NULL DEFAULT now(),
        last_seen timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE zdm.step_attempts (
        attempt_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id uuid NOT NULL,
        change_id text NOT NULL REFERENCES zdm.changes,
        phase text NOT NULL CHECK (phase IN ('expand', 'migrate', 'switch', 'contract')),
        step_key text NOT NULL,
        attempt int NOT NULL CHECK (attempt >= 0),
        started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        ended_at timestamptz,
        outcome text NOT NULL DEFAULT 'running' CHECK (outcome IN ("""
    + ", ".join(f"'{o}'" for o in OUTCOMES)
    + """)),
        sqlstate text,
        message text,
        lock_wait_s float8,
        blockers jsonb NOT NULL DEFAULT '[]',
        settings jsonb NOT NULL DEFAULT '{}',
        backend_pid int)""",
    "CREATE INDEX step_attempts_change_step ON zdm.step_attempts (change_id, step_key)",
)

_V2 = (
    # One row per backfill step: its range, its checkpoint (written in each batch's transaction),
    # and the controls a second session may set while it runs (paused, batch_size, pause_ms).
    """CREATE TABLE zdm.backfills (
        change_id text NOT NULL REFERENCES zdm.changes,
        step_key text NOT NULL,
        table_name text NOT NULL,
        key_columns text[] NOT NULL,
        upper_key text[],
        last_key text[],
        rows_estimate bigint,
        rows_scanned bigint NOT NULL DEFAULT 0,
        rows_updated bigint NOT NULL DEFAULT 0,
        batches int NOT NULL DEFAULT 0,
        status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
        started_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        paused boolean NOT NULL DEFAULT false,
        batch_size int CHECK (batch_size > 0),
        pause_ms int CHECK (pause_ms >= 0),
        PRIMARY KEY (change_id, step_key))""",
    """CREATE TABLE zdm.backfill_batches (
        change_id text NOT NULL,
        step_key text NOT NULL,
        batch int NOT NULL,
        lower_key text[],
        upper_key text[] NOT NULL,
        rows_scanned int NOT NULL,
        rows_updated int NOT NULL,
        batch_size int NOT NULL,
        seconds float8 NOT NULL,
        retries int NOT NULL DEFAULT 0,
        throttled_s float8 NOT NULL DEFAULT 0,
        committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (change_id, step_key, batch),
        FOREIGN KEY (change_id, step_key) REFERENCES zdm.backfills)""",
)

_V3 = (
    # One row per run of a phase (notebook or command), and the sign-offs that open the next gate.
    """CREATE TABLE zdm.phase_runs (
        run_id uuid PRIMARY KEY,
        change_id text NOT NULL REFERENCES zdm.changes,
        phase text NOT NULL CHECK (phase IN ('expand', 'migrate', 'switch', 'contract')),
        started_at timestamptz NOT NULL DEFAULT now(),
        ended_at timestamptz,
        outcome text NOT NULL DEFAULT 'running'
            CHECK (outcome IN ('running', 'succeeded', 'failed', 'refused', 'interrupted')),
        parameters jsonb NOT NULL DEFAULT '{}',
        server_version text,
        operator text,
        notebook_path text,
        notebook_sha256 text,
        message text)""",
    """CREATE TABLE zdm.signoffs (
        signoff_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        change_id text NOT NULL REFERENCES zdm.changes,
        phase text NOT NULL CHECK (phase IN ('expand', 'migrate', 'switch', 'contract')),
        by_name text NOT NULL CHECK (by_name <> ''),
        ticket text,
        notes text,
        signed_at timestamptz NOT NULL DEFAULT now(),
        evidence jsonb NOT NULL DEFAULT '{}')""",
    "CREATE INDEX signoffs_change_phase ON zdm.signoffs (change_id, phase)",
    # The plan's step keys per phase, so status and sign-off need only the change id.
    "ALTER TABLE zdm.changes ADD COLUMN steps jsonb NOT NULL DEFAULT '{}'",
)

_V4 = (
    # A dry run (gate, preflight and plan shown, nothing executed) is recorded as such.
    "ALTER TABLE zdm.phase_runs DROP CONSTRAINT phase_runs_outcome_check",
    """ALTER TABLE zdm.phase_runs ADD CONSTRAINT phase_runs_outcome_check
        CHECK (outcome IN ('running', 'succeeded', 'failed', 'refused', 'interrupted', 'dry_run'))""",
)

# (version, what it adds, statements). Append only: a released version is never edited.
VERSIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (1, "changes and step attempts", _V1),
    (2, "backfill checkpoints, batches and controls", _V2),
    (3, "phase runs and sign-offs", _V3),
    (4, "dry runs", _V4),
)


def ensure(conn: Conn) -> int:
    """Create or upgrade schema ``zdm`` to the latest version; return that version.

    Safe to call from concurrent sessions: an advisory lock serialises them, and each version is
    applied in the same transaction that records it.
    """
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", [LOCK_CLASS])
            conn.execute("SELECT set_config('lock_timeout', '5s', true)")
            conn.execute("CREATE SCHEMA IF NOT EXISTS zdm")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS zdm.schema_version (version int PRIMARY KEY,"
                " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM zdm.schema_version").fetchone()
            current = int(row[0]) if row else 0
            for version, description, statements in VERSIONS:
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO zdm.schema_version (version, description) VALUES (%s, %s)",
                    [version, description],
                )
                current = version
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseError(
            "cannot create the ledger schema zdm: permission denied. Grant CREATE on the database"
            " to the migration role, or create schema zdm owned by it",
            exc.sqlstate,
        ) from exc
    if current > VERSIONS[-1][0]:
        raise ZdmError(
            f"the ledger in this database is version {current}, newer than this zdm-runbook"
            f" ({VERSIONS[-1][0]}): upgrade zdm-runbook"
        )
    return current


def record_change(
    conn: Conn,
    change_id: str,
    description: str,
    plan_sha256: str,
    steps: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Upsert the change's row: its plan digest and step keys per phase are refreshed on every run."""
    conn.execute(
        "INSERT INTO zdm.changes (change_id, description, plan_sha256, steps) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (change_id) DO UPDATE SET description = excluded.description,"
        " plan_sha256 = excluded.plan_sha256, steps = excluded.steps, last_seen = now()",
        [change_id, description, plan_sha256, Jsonb({k: list(v) for k, v in (steps or {}).items()})],
    )


def start_phase_run(
    conn: Conn, run_id: uuid.UUID, change_id: str, phase: str, parameters: Mapping[str, Any]
) -> None:
    """Record the start of a phase run: who (the database role), on which server, with what parameters."""
    conn.execute(
        "INSERT INTO zdm.phase_runs (run_id, change_id, phase, parameters, server_version, operator)"
        " VALUES (%s, %s, %s, %s, current_setting('server_version'), current_user)",
        [run_id, change_id, phase, Jsonb(json.loads(redact(json.dumps(dict(parameters), default=str))))],
    )


def close_abandoned_runs(conn: Conn, change_id: str, run_id: uuid.UUID) -> int:
    """Runs of ``change_id`` still ``running`` while we hold its lock died without recording their
    end (a SIGKILL, a lost machine): record them as ``interrupted``. Returns how many."""
    cur = conn.execute(
        "UPDATE zdm.phase_runs SET outcome = 'interrupted', ended_at = now(),"
        " message = 'stopped without recording its end (killed?); found by run ' || %s::text"
        " WHERE change_id = %s AND outcome = 'running' AND run_id <> %s",
        [run_id, change_id, run_id],
    )
    return cur.rowcount


def finish_phase_run(conn: Conn, run_id: uuid.UUID, outcome: str, message: str | None = None) -> None:
    conn.execute(
        "UPDATE zdm.phase_runs SET ended_at = now(), outcome = %s, message = %s WHERE run_id = %s",
        [outcome, redact(message) if message else None, run_id],
    )


def record_notebook(conn: Conn, run_id: uuid.UUID, path: str, sha256: str, message: str | None) -> str | None:
    """Attach the archived notebook to its phase run; a run the kernel never finished (killed,
    crashed) is closed as ``failed`` with ``message``. Returns the run's outcome (None: no such run)."""
    row = conn.execute(
        "UPDATE zdm.phase_runs SET notebook_path = %s, notebook_sha256 = %s,"
        " ended_at = coalesce(ended_at, now()),"
        " message = CASE WHEN outcome = 'running' THEN %s ELSE message END,"
        " outcome = CASE WHEN outcome = 'running' THEN 'failed' ELSE outcome END"
        " WHERE run_id = %s RETURNING outcome",
        [path, sha256, redact(message or "the notebook stopped before the run was recorded"), run_id],
    ).fetchone()
    return str(row[0]) if row else None


def start_attempt(
    conn: Conn,
    run_id: uuid.UUID,
    change_id: str,
    phase: str,
    step_key: str,
    attempt: int,
    settings: Mapping[str, Any],
    backend_pid: int | None,
) -> int:
    """Insert an attempt as ``running``; return its id for :func:`finish_attempt`."""
    row = conn.execute(
        "INSERT INTO zdm.step_attempts (run_id, change_id, phase, step_key, attempt, settings,"
        " backend_pid) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING attempt_id",
        [run_id, change_id, phase, step_key, attempt, Jsonb(dict(settings)), backend_pid],
    ).fetchone()
    if row is None:  # pragma: no cover - INSERT ... RETURNING always returns the row
        raise ZdmError("the ledger did not return the attempt id")
    return int(row[0])


def finish_attempt(
    conn: Conn,
    attempt_id: int,
    outcome: str,
    *,
    sqlstate: str | None = None,
    message: str | None = None,
    lock_wait_s: float | None = None,
    blockers: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Close an attempt with its outcome; the message and blockers' queries are redacted."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    clean = json.loads(redact(json.dumps(list(blockers), default=str)))
    conn.execute(
        "UPDATE zdm.step_attempts SET ended_at = clock_timestamp(), outcome = %s, sqlstate = %s,"
        " message = %s, lock_wait_s = %s, blockers = %s WHERE attempt_id = %s",
        [
            outcome,
            sqlstate,
            redact(message) if message else None,
            lock_wait_s,
            Jsonb(clean),
            attempt_id,
        ],
    )


def attempts(conn: Conn, change_id: str | None = None) -> pd.DataFrame:
    """Step attempts, oldest first (optionally of one change), with their blockers as lists."""
    query = (
        "SELECT attempt_id, run_id::text AS run_id, change_id, phase, step_key, attempt, started_at,"
        " ended_at, outcome, sqlstate, message, lock_wait_s, blockers, settings, backend_pid"
        " FROM zdm.step_attempts WHERE %(change)s::text IS NULL OR change_id = %(change)s"
        " ORDER BY attempt_id"
    )
    with conn.cursor() as cur:
        cur.execute(query, {"change": change_id})
        names = [d.name for d in cur.description or ()]
        return pd.DataFrame(cur.fetchall(), columns=names)


def applied_steps(conn: Conn, change_id: str) -> set[str]:
    """Keys of the change's steps whose latest attempt applied them (or found them applied)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (step_key) step_key, outcome FROM zdm.step_attempts WHERE change_id = %s"
        " ORDER BY step_key, attempt_id DESC",
        [change_id],
    ).fetchall()
    return {key for key, outcome in rows if outcome in ("applied", "skipped")}


def lock_change(conn: Conn, change_id: str) -> None:
    """Hold a session advisory lock for ``change_id`` so two runs of one change never overlap.

    Raises :class:`ZdmError` naming the session that holds it. Released by :func:`unlock_change`
    or when the connection closes.
    """
    row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", [LOCK_CLASS, change_id]).fetchone()
    if row and row[0]:
        return
    holder = conn.execute(
        "SELECT l.pid, a.application_name, extract(epoch FROM now() - a.backend_start)::float8"
        " FROM pg_locks l LEFT JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory'"
        " AND l.classid = %s::int4::oid AND l.objid = hashtext(%s)::oid AND l.objsubid = 2"
        " AND l.granted",
        [LOCK_CLASS, change_id],
    ).fetchone()
    who = f"pid {holder[0]} ({holder[1] or 'no application_name'})" if holder else "another session"
    raise ZdmError(
        f"change {change_id} is being run right now by {who}: wait for it to finish; two runs of"
        " one change never overlap"
    )


def unlock_change(conn: Conn, change_id: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [LOCK_CLASS, change_id])


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
            " batches, paused, batch_size, pause_ms, started_at, updated_at, finished_at"
            " FROM zdm.backfills WHERE %(change)s::text IS NULL OR change_id = %(change)s"
            " ORDER BY change_id, step_key",
            {"change": change_id},
        )
        names = [d.name for d in cur.description or ()]
        return pd.DataFrame(cur.fetchall(), columns=names)

"""Changes, phase runs, step attempts and the change's run lock: what ran and what it waited for.

Every write is its own short autocommitted statement, outside any step's transaction, so a
rolled-back step still leaves the record of its attempt.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from zdm_runbook.core.connect import redact
from zdm_runbook.core.errors import ZdmError
from zdm_runbook.ledger.schema import LOCK_CLASS, OUTCOMES

Conn = psycopg.Connection[Any]


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


def attach_notebook(conn: Conn, run_id: uuid.UUID, path: str, sha256: str | None = None) -> None:
    """An interactive run's notebook: its path when the run starts, its SHA-256 once signed off."""
    conn.execute(
        "UPDATE zdm.phase_runs SET notebook_path = %s, notebook_sha256 = coalesce(%s, notebook_sha256)"
        " WHERE run_id = %s",
        [path, sha256, run_id],
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


def phase_run_recorded(conn: Conn, run_id: uuid.UUID) -> bool:
    """True when the ledger exists and holds the phase run ``run_id`` (a run can stop before that)."""
    table = conn.execute("SELECT to_regclass('zdm.phase_runs') IS NOT NULL").fetchone()
    if not (table and table[0]):  # one statement could not even be planned without the table
        return False
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM zdm.phase_runs WHERE run_id = %s)", [run_id]).fetchone()
    return bool(row and row[0])


def failed_sqlstate(conn: Conn, run_id: uuid.UUID) -> str | None:
    """The SQLSTATE of the latest failed step attempt of a phase run (None: no statement failed)."""
    row = conn.execute(
        "SELECT sqlstate FROM zdm.step_attempts WHERE run_id = %s AND sqlstate IS NOT NULL"
        " AND outcome NOT IN ('applied', 'skipped', 'running') ORDER BY attempt_id DESC LIMIT 1",
        [run_id],
    ).fetchone()
    return str(row[0]) if row else None

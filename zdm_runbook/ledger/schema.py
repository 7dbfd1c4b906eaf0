"""The ledger's schema ``zdm``: created idempotently and versioned.

:data:`VERSIONS` lists each version's statements, and :func:`ensure` applies the missing ones in
order under an advisory lock, so concurrent runs and later releases converge.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from zdm_runbook.core.errors import DatabaseError, ZdmError

Conn = psycopg.Connection[Any]
LOCK_CLASS: Final = 0x7A646D  # "zdm": first key of every advisory lock the ledger takes
SCHEMA: Final = "zdm"
_V1_OUTCOMES: Final = (  # a step attempt's outcomes as version 1 created them
    "running",
    "applied",
    "skipped",
    "lock_timeout",
    "deadlock",
    "query_canceled",
    "failed",
    "interrupted",
)
# ... and since version 7: "no-go", a step not sent (an anti-wraparound vacuum runs on its table).
OUTCOMES: Final = (*_V1_OUTCOMES, "no-go")

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
    + ", ".join(f"'{o}'" for o in _V1_OUTCOMES)
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

_V5 = (
    # A backfill the operator stopped (Jupyter's Stop, Ctrl-C) says so, rather than "running".
    "ALTER TABLE zdm.backfills DROP CONSTRAINT backfills_status_check",
    """ALTER TABLE zdm.backfills ADD CONSTRAINT backfills_status_check
        CHECK (status IN ('running', 'done', 'failed', 'interrupted'))""",
)

_V6 = (
    # Why a running backfill waits now (a health hold), for a second session to see.
    "ALTER TABLE zdm.backfills ADD COLUMN hold text",
)

_V7 = (
    # A step the executor did not send, because its lock request would have queued behind an
    # anti-wraparound vacuum, is recorded as "no-go".
    "ALTER TABLE zdm.step_attempts DROP CONSTRAINT step_attempts_outcome_check",
    "ALTER TABLE zdm.step_attempts ADD CONSTRAINT step_attempts_outcome_check CHECK (outcome IN ("
    + ", ".join(f"'{o}'" for o in OUTCOMES)
    + "))",
)

# (version, what it adds, statements). Append only: a released version is never edited.
VERSIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (1, "changes and step attempts", _V1),
    (2, "backfill checkpoints, batches and controls", _V2),
    (3, "phase runs and sign-offs", _V3),
    (4, "dry runs", _V4),
    (5, "interrupted backfills", _V5),
    (6, "backfill holds", _V6),
    (7, "steps not sent for an anti-wraparound vacuum", _V7),
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

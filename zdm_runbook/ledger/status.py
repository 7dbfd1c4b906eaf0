"""What the ledger says about a database's changes, for the people who read it: zdm status, the
overview dashboard, the demo's summary. Read-only, except that an existing ledger is upgraded.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import psycopg
from psycopg.rows import dict_row

from zdm_runbook.ledger.schema import ensure

Conn = psycopg.Connection[Any]


def ledger_ready(conn: Conn) -> bool:
    """True when this database has a ledger, brought up to date; False (nothing created) when not."""
    row = conn.execute("SELECT to_regnamespace('zdm') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return False
    ensure(conn)
    return True


def changes(conn: Conn, change_id: str | None = None) -> list[tuple[str, str]]:
    """``(change_id, description)`` of every change in the ledger (or just ``change_id``)."""
    rows = conn.execute(
        "SELECT change_id, description FROM zdm.changes WHERE %(c)s::text IS NULL OR change_id = %(c)s"
        " ORDER BY change_id",
        {"c": change_id},
    ).fetchall()
    return [(str(c), str(d)) for c, d in rows]


def change_details(conn: Conn, change_id: str) -> dict[str, list[dict[str, Any]]]:
    """Backfill progress, each phase's last run (and its notebook), and the steps whose last attempt
    failed: raw rows (timestamps as datetimes, messages as stored, already redacted)."""
    with conn.cursor(row_factory=dict_row) as cur:
        fills = cur.execute(
            "SELECT step_key AS step, status, rows_scanned, rows_estimate, paused FROM zdm.backfills"
            " WHERE change_id = %s ORDER BY step_key",
            [change_id],
        ).fetchall()
        runs = cur.execute(
            "SELECT DISTINCT ON (phase) phase, outcome, started_at, notebook_path AS notebook"
            " FROM zdm.phase_runs WHERE change_id = %s ORDER BY phase, started_at DESC",
            [change_id],
        ).fetchall()
        failures = cur.execute(
            "SELECT step_key AS step, outcome, sqlstate, started_at AS at, message"
            " FROM (SELECT DISTINCT ON (step_key) step_key, outcome, sqlstate, started_at, message"
            "   FROM zdm.step_attempts WHERE change_id = %s ORDER BY step_key, attempt_id DESC) s"
            " WHERE outcome NOT IN ('applied', 'skipped', 'running') ORDER BY started_at",
            [change_id],
        ).fetchall()
    return {"backfills": fills, "last_runs": runs, "last_failures": failures}


OVERVIEW_COLUMNS = (
    "change",
    "phase",
    "steps",
    "last run",
    "started",
    "notebook",
    "signed off by",
    "signed off at",
)


def overview(conn: Conn) -> pd.DataFrame:
    """One row per change and phase: steps planned, last run (outcome, start, notebook), sign-off."""
    rows = conn.execute(
        "SELECT c.change_id, p.phase, jsonb_array_length(coalesce(c.steps -> p.phase, '[]')),"
        " r.outcome, r.started_at, r.notebook_path, s.by_name, s.signed_at"
        " FROM zdm.changes c CROSS JOIN unnest(ARRAY['expand', 'migrate', 'switch', 'contract'])"
        "   WITH ORDINALITY p(phase, n)"
        " LEFT JOIN LATERAL (SELECT outcome, started_at, notebook_path FROM zdm.phase_runs"
        "   WHERE change_id = c.change_id AND phase = p.phase ORDER BY started_at DESC LIMIT 1) r ON true"
        " LEFT JOIN LATERAL (SELECT by_name, signed_at FROM zdm.signoffs"
        "   WHERE change_id = c.change_id AND phase = p.phase ORDER BY signoff_id DESC LIMIT 1) s ON true"
        " ORDER BY c.change_id, p.n"
    ).fetchall()
    return pd.DataFrame(rows, columns=list(OVERVIEW_COLUMNS))


# One committed batch, as charts and progress frames show it (zdm.backfill_batches, plus where the
# batch stands: seconds since the backfill's first batch, and rows done so far).
BATCH_COLUMNS = (
    "batch",
    "at_s",
    "rows_scanned",
    "rows_updated",
    "batch_size",
    "seconds",
    "retries",
    "throttled_s",
    "rows_done",
)


def batches(conn: Conn) -> pd.DataFrame:
    """Every committed backfill batch, with seconds since its backfill's first and rows done so far."""
    rows = conn.execute(
        "SELECT b.change_id, b.step_key, f.table_name, b.batch,"
        " extract(epoch FROM b.committed_at - min(b.committed_at) OVER w)::float8,"
        " b.rows_scanned, b.rows_updated, b.batch_size, b.seconds, b.retries, b.throttled_s,"
        " sum(b.rows_scanned) OVER (w ORDER BY b.batch)"
        " FROM zdm.backfill_batches b JOIN zdm.backfills f USING (change_id, step_key)"
        " WINDOW w AS (PARTITION BY b.change_id, b.step_key) ORDER BY 1, 2, 4"
    ).fetchall()
    return pd.DataFrame(rows, columns=["change", "step", "table", *BATCH_COLUMNS])


def lock_wait_by_phase(conn: Conn) -> dict[str, float]:
    """Seconds every step attempt of every change waited for locks, per phase."""
    rows = conn.execute("SELECT phase, sum(lock_wait_s) FROM zdm.step_attempts GROUP BY phase").fetchall()
    return {str(phase): float(wait or 0) for phase, wait in rows}


def backfilled_tables(conn: Conn) -> list[tuple[str, int, int]]:
    """Per table: rows backfilled (the most any of its backfill steps updated, not their sum: two
    columns of one 200,000-row table are 200,000 rows) and how many backfill steps ran on it."""
    rows = conn.execute(
        "SELECT table_name, max(rows_updated), count(*) FROM zdm.backfills GROUP BY table_name ORDER BY 1"
    ).fetchall()
    return [(str(t), int(n), int(k)) for t, n, k in rows]

"""An autovacuum on a step's table: an anti-wraparound one stops the step unsent, a regular one
is made to yield.

An anti-wraparound vacuum does not yield to DDL as other autovacuums do, so the step would wait
behind it, and every app query on the table behind the step, for as long as it runs: the step is
not sent (:func:`wraparound_reason`).

A running autovacuum holds ShareUpdateExclusiveLock on its table, which conflicts with every lock
a DDL step takes (ShareUpdateExclusiveLock and stronger). PostgreSQL lets the DDL through: once a
lock request has waited ``deadlock_timeout`` (1 s by default), the deadlock check cancels an
autovacuum that blocks it, unless that vacuum runs to prevent wraparound. A guarded attempt never
waits that long: its ``lock_timeout`` (100 ms on the ladder's first rung, 1 s at most) ends the
wait first. So the autovacuum is never cancelled, every attempt fails behind it, and the app
queues behind each attempt. Measured on 18.6 (a slowed autovacuum of a 200,000-row table): an
``ADD COLUMN`` failed all 10 attempts over 53 s, the app stalling a full second on six of them,
and the phase stopped.

So before each attempt of a step in a transaction whose lock conflicts, the executor cancels
(``pg_cancel_backend``) a regular autovacuum on the step's tables, as PostgreSQL itself would have
after ``deadlock_timeout``, and waits for it to end; the autovacuum launcher starts it again later.
An anti-wraparound vacuum is never cancelled: the executor does not send the step at all while one
runs. A step outside a transaction (``CONCURRENTLY``) waits minutes for its lock, long enough for
PostgreSQL's own cancel, and the app does not queue behind it. ``cancel_autovacuum = false`` turns
this off.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from zdm_runbook.core.connect import redact
from zdm_runbook.inspect.locks import autovacuum_rows
from zdm_runbook.lint.analysis import LOCK_MODES, analyze
from zdm_runbook.plan.steps import Step

Conn = psycopg.Connection[Any]
# An autovacuum's lock, and the weakest mode that conflicts with it (itself).
_FIRST_CONFLICTING = LOCK_MODES.index("ShareUpdateExclusiveLock")
WAIT_S = 5.0  # how long to wait for a cancelled autovacuum to end before the attempt goes anyway


def conflicts_with_autovacuum(step: Step) -> bool:
    """Whether the step's transaction takes a lock an autovacuum's would block (a DO block, whose
    locks are not known before it runs, is taken to)."""
    if not step.transactional or step.backfill is not None or not step.tables:
        return False
    analyses = analyze(step.render())
    if any(a.kind == "DoStmt" for a in analyses):
        return True
    modes = [e.lock for a in analyses for e in a.effects if e.lock in LOCK_MODES]
    return any(LOCK_MODES.index(mode) >= _FIRST_CONFLICTING for mode in modes)


def wraparound_reason(vacuums: list[dict[str, Any]]) -> str | None:
    """Why the step must not ask for its lock now, given the autovacuums on its tables
    (:func:`~zdm_runbook.inspect.locks.autovacuum_rows`): an anti-wraparound one among them."""
    found = [r for r in vacuums if r["wraparound"]]
    if not found:
        return None
    who = "; ".join(f"pid {r['pid']} on {r['table']} ({r['phase']})" for r in found)
    return (
        f"an anti-wraparound vacuum runs ({who}) and does not yield its lock, so the step would queue"
        " behind it and the app behind the step; the step was not sent. Wait for the vacuum to finish"
        " (zdm_runbook.locks.autovacuum shows its progress), then run the phase again"
    )


def yield_autovacuum(
    conn: Conn, step: Step, vacuums: list[dict[str, Any]], wait_s: float = WAIT_S
) -> list[str]:
    """Cancel the regular ones of ``vacuums`` (the autovacuums on ``step``'s tables) and wait for
    them to end (at most ``wait_s``). One note per vacuum, saying what was done, for the event log
    and the ledger."""
    found = [r for r in vacuums if not r["wraparound"]]
    if not found or not conflicts_with_autovacuum(step):
        return []
    notes, cancelled = [], set()
    for vacuum in found:
        what = f"autovacuum pid {vacuum['pid']} on {vacuum['table']} ({vacuum['phase']})"
        try:
            row = conn.execute("SELECT pg_cancel_backend(%s)", [vacuum["pid"]]).fetchone()
        except psycopg.errors.InsufficientPrivilege as exc:
            notes.append(f"could not cancel {what}: {redact(str(exc)).strip()}")
            continue
        if not (row and row[0]):
            notes.append(f"could not cancel {what}: it had ended")
            continue
        cancelled.add(vacuum["pid"])
        notes.append(
            f"cancelled {what} before the attempt: it yields to DDL only after deadlock_timeout,"
            " longer than the attempt waits; the autovacuum launcher starts it again later"
        )
    deadline = time.monotonic() + wait_s  # only the cancelled ones are waited for: the rest go on
    while cancelled and time.monotonic() < deadline:
        if not cancelled & {r["pid"] for r in autovacuum_rows(conn, step.tables)}:
            break
        time.sleep(0.05)
    return notes

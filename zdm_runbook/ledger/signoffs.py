"""Where a change stands, phase by phase, and the sign-offs that open the next phase's gate.

A phase is *complete* when every step the plan puts in it has, as its latest ledger attempt,
``applied`` or ``skipped`` (already done): the database, not a notebook, is the source of truth.
A sign-off records who read the run and approved it, with an optional ticket and notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from zdm_runbook.core.connect import redact
from zdm_runbook.core.errors import ZdmError
from zdm_runbook.spec.model import Phase

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class SignOff:
    """One approval of one phase of one change."""

    phase: str
    by: str
    ticket: str | None
    notes: str | None
    at: datetime
    age_s: float = 0.0  # seconds since ``at`` by the server's clock, when it was read


@dataclass(frozen=True)
class PhaseState:
    """A phase as the ledger sees it: which steps are done, and its latest sign-off."""

    phase: str
    steps: int
    done: int
    failed_steps: tuple[str, ...]
    signoff: SignOff | None
    ran: bool = True  # a phase without steps is complete once a run of it succeeded
    last_failure: str | None = None  # the latest run failed after its steps (a compat check, ...)

    @property
    def complete(self) -> bool:
        return self.done == self.steps and (self.steps > 0 or self.ran) and self.last_failure is None

    def why_not(self) -> str:
        """Why the phase is not complete, in one line."""
        if self.done == self.steps and self.last_failure is not None:
            return f"its last run failed: {self.last_failure[:300]}; fix it and re-run the phase"
        failed = f" (failed: {', '.join(self.failed_steps)})" if self.failed_steps else ""
        return f"{self.done} of {self.steps} steps are done{failed}"


def phase_state(conn: Conn, change_id: str, phase: Phase | str) -> PhaseState:
    """The ledger's view of one phase: its steps (as the last run planned them), done and failed."""
    p = Phase(phase)
    row = conn.execute(
        "SELECT steps -> %s FROM zdm.changes WHERE change_id = %s", [p.value, change_id]
    ).fetchone()
    if row is None:
        raise ZdmError(
            f"change {change_id} is not in the ledger of this database: no phase of it has run here"
        )
    keys = [str(k) for k in row[0] or []]
    rows = conn.execute(
        "SELECT DISTINCT ON (step_key) step_key, outcome FROM zdm.step_attempts"
        " WHERE change_id = %s AND phase = %s ORDER BY step_key, attempt_id DESC",
        [change_id, p.value],
    ).fetchall()
    latest = {str(k): str(o) for k, o in rows}
    done = sum(latest.get(k) in ("applied", "skipped") for k in keys)
    failed = tuple(k for k in keys if latest.get(k) not in (None, "applied", "skipped", "running"))
    ran = bool(rows) or (not keys and _phase_ran(conn, change_id, p))
    last = conn.execute(
        "SELECT outcome, message FROM zdm.phase_runs WHERE change_id = %s AND phase = %s"
        " AND outcome IN ('succeeded', 'failed') ORDER BY started_at DESC LIMIT 1",
        [change_id, p.value],
    ).fetchone()
    failure = str(last[1] or "no message") if last and last[0] == "failed" else None
    return PhaseState(p.value, len(keys), done, failed, latest_signoff(conn, change_id, p), ran, failure)


def _phase_ran(conn: Conn, change_id: str, phase: Phase) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM zdm.phase_runs WHERE change_id = %s AND phase = %s"
        " AND outcome = 'succeeded')",
        [change_id, phase.value],
    ).fetchone()
    return bool(row and row[0])


def latest_signoff(conn: Conn, change_id: str, phase: Phase | str) -> SignOff | None:
    row = conn.execute(
        "SELECT phase, by_name, ticket, notes, signed_at, extract(epoch FROM now() - signed_at)::float8"
        " FROM zdm.signoffs WHERE change_id = %s AND phase = %s ORDER BY signoff_id DESC LIMIT 1",
        [change_id, Phase(phase).value],
    ).fetchone()
    return SignOff(*row) if row else None


def sign_off(
    conn: Conn,
    change_id: str,
    phase: Phase | str,
    by: str,
    ticket: str | None = None,
    notes: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> SignOff:
    """Record an approval of a *complete* phase; refused (nothing written) when it is not."""
    p = Phase(phase)
    if not by.strip():
        raise ZdmError("a sign-off names who approves: the name cannot be empty")
    state = phase_state(conn, change_id, p)
    if not state.complete:
        raise ZdmError(
            f"cannot sign off {p.value} of {change_id}: {state.why_not()};"
            f" run the phase: zdm run {p.value} SPEC"
        )
    row = conn.execute(
        "INSERT INTO zdm.signoffs (change_id, phase, by_name, ticket, notes, evidence)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING phase, by_name, ticket, notes, signed_at",
        [change_id, p.value, by.strip(), ticket, redact(notes) if notes else None, Jsonb(evidence or {})],
    ).fetchone()
    if row is None:  # pragma: no cover - INSERT ... RETURNING returns the row
        raise ZdmError("the ledger did not return the sign-off")
    return SignOff(*row)

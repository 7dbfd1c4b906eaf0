"""Gates: the checks a phase must pass before any of its DDL runs, each explaining itself.

migrate needs expand complete and signed off; switch needs migrate complete (every backfill done
and verified) and signed off; contract needs switch signed off and one deploy cycle passed since
(default 24 h, so no old-app instance still runs; a written reason waives it and is recorded).
A refused gate changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zdm_runbook.core.durations import human_seconds
from zdm_runbook.core.errors import Refused
from zdm_runbook.ledger.signoffs import Conn, phase_state
from zdm_runbook.spec.model import Phase

DEPLOY_CYCLE_S = 24 * 3600
_BEFORE = {Phase.MIGRATE: Phase.EXPAND, Phase.SWITCH: Phase.MIGRATE, Phase.CONTRACT: Phase.SWITCH}


@dataclass
class Gate:
    """A gate's verdict: open or not, why not, and a waiver if one was used."""

    phase: str
    ok: bool
    reasons: list[str] = field(default_factory=list)
    waived: str | None = None
    # Closed only by time (the deploy cycle) or a missing sign-off: it opens by itself or by a
    # person's sign-off, with nothing to fix or re-run. A scheduler may wait on such a gate.
    waiting: bool = False

    def __str__(self) -> str:
        if self.ok:
            return f"gate to {self.phase}: open" + (
                f" (deploy cycle waived: {self.waived})" if self.waived else ""
            )
        return f"gate to {self.phase}: closed\n" + "\n".join(f"  - {r}" for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "ok": self.ok,
            "reasons": self.reasons,
            "waived": self.waived,
            "waiting": self.waiting,
        }


class GateRefused(Refused):
    """A phase may not run yet; the message lists every reason and what to do."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(str(gate))
        self.gate = gate


def check_gate(
    conn: Conn,
    change_id: str,
    phase: Phase | str,
    *,
    deploy_cycle_s: float = DEPLOY_CYCLE_S,
    deploy_cycle_override: str | None = None,
) -> Gate:
    """Whether ``phase`` of ``change_id`` may run now, from the ledger alone."""
    p = Phase(phase)
    if p == Phase.EXPAND:
        return Gate(p.value, True)
    before = _BEFORE[p]
    state = phase_state(conn, change_id, before)
    reasons = []
    waits = 0  # how many of the reasons time or a sign-off alone will clear
    if not state.complete and not state.ran:
        why = " (it has no schema steps, but its run is the record)" if state.steps == 0 else ""
        reasons.append(f"{before.value} has not run yet{why}: zdm run {before.value} SPEC")
    elif not state.complete:
        reasons.append(f"{before.value} is not complete: {state.why_not()}")
    if state.signoff is None:
        waits += 1
        reasons.append(
            f"{before.value} is not signed off: read its archived run, then"
            f" zdm signoff {change_id} {before.value} --by NAME"
        )
    if p == Phase.SWITCH:
        rows = conn.execute(
            "SELECT step_key, status, rows_scanned, rows_estimate FROM zdm.backfills WHERE change_id = %s"
            " AND status <> 'done' ORDER BY step_key",
            [change_id],
        ).fetchall()
        reasons += [
            f"backfill {key} is {status} ({scanned:,} of ~{total or 0:,} rows)"
            for key, status, scanned, total in rows
        ]
    waived = None
    if p == Phase.CONTRACT and state.signoff is not None:
        age = state.signoff.age_s  # the server's clock, the one that wrote signed_at
        if age < deploy_cycle_s:
            if deploy_cycle_override and deploy_cycle_override.strip():
                waived = deploy_cycle_override.strip()
            else:
                waits += 1
                reasons.append(
                    f"switch was signed off {human_seconds(age)} ago: one deploy cycle"
                    f" ({human_seconds(deploy_cycle_s)}) must pass so no old-app instance still uses the old"
                    " shape; or give deploy_cycle_override a reason"
                )
    return Gate(p.value, not reasons, reasons, waived, waiting=bool(reasons) and waits == len(reasons))

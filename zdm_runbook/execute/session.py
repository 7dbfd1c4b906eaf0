"""One run of one phase: its two connections, its ledger row, and the change's advisory lock.

Both ways of running a phase use it: :func:`zdm_runbook.execute.executor.execute_phase` (library and tests)
and the phase notebooks (:mod:`zdm_runbook.notebook.runbook`). Opening it creates or upgrades the ledger,
records the change's plan, takes the per-change lock (a second run of the change is refused,
naming the session that runs it) and records the phase run as ``running``; :meth:`finish`
records how it ended, and closing releases the lock with the connections.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import psycopg

from zdm_runbook import ledger
from zdm_runbook.core.connect import connect, describe, refuse_filtered_reads, resolve_dsn
from zdm_runbook.core.errors import ZdmError
from zdm_runbook.core.pooling import pooling_error, shared_backend
from zdm_runbook.ledger.published import refuse_published_ledger
from zdm_runbook.plan.planner import Plan
from zdm_runbook.spec.model import Phase

Conn = psycopg.Connection[Any]
OUTCOMES = ("succeeded", "failed", "refused", "interrupted", "dry_run")


def plan_digest(plan: Plan) -> str:
    """SHA-256 of the plan's JSON: the ledger notices when a change's plan differs between runs."""
    return hashlib.sha256(plan.to_json().encode()).hexdigest()


def plan_steps(plan: Plan) -> dict[str, list[str]]:
    """The plan's step keys per phase, as the ledger keeps them."""
    return {ph.value: [st.key for st in plan.for_phase(ph)] for ph in Phase}


def _opened(conn: Conn | None) -> Conn:
    if conn is None or conn.closed:
        raise ZdmError("the phase session is not open")
    return conn


class PhaseSession:
    """A phase run in progress: ``worker`` runs the steps, ``control`` watches and writes the ledger."""

    def __init__(
        self,
        plan: Plan,
        phase: Phase | str,
        dsn: str | None = None,
        *,
        env: str | None = None,
        run_id: uuid.UUID | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.plan, self.phase = plan, Phase(phase)
        self.conninfo = resolve_dsn(dsn, env)
        self.run_id = run_id or uuid.uuid4()
        self.parameters = dict(parameters or {})
        self._worker: Conn | None = None
        self._control: Conn | None = None
        self.outcome: str | None = None

    @property
    def worker(self) -> Conn:
        """The connection that runs the steps (autocommit)."""
        return _opened(self._worker)

    @property
    def control(self) -> Conn:
        """The connection that watches for blockers and writes the ledger (autocommit)."""
        return _opened(self._control)

    @property
    def where(self) -> str:
        """Where the session points, redacted: ``user@host:port/db``."""
        return describe(self.conninfo)

    def open(self) -> Self:
        """Connect, bring the ledger up to date, lock the change and record the run as ``running``."""
        try:
            self._control = connect(self.conninfo, phase=f"{self.phase.value}:control", autocommit=True)
            self._worker = connect(self.conninfo, phase=self.phase.value, autocommit=True)
            evidence = shared_backend(self.control, self.worker)
            if evidence:  # before the ledger, or a SET: nothing is written or set through a pooler
                raise pooling_error(self.conninfo, evidence)
            refuse_filtered_reads(self.control)  # only now: a pooler would hand the setting on
            refuse_filtered_reads(self.worker)
            refuse_published_ledger(self.control, bool(self.parameters.get("ledger_published")))
            ledger.ensure(self.control)
            change = self.plan.change
            ledger.record_change(
                self.control, change.id, change.description, plan_digest(self.plan), plan_steps(self.plan)
            )
            ledger.lock_change(self.control, change.id)
            ledger.close_abandoned_runs(self.control, change.id, self.run_id)
            ledger.start_phase_run(self.control, self.run_id, change.id, self.phase.value, self.parameters)
        except BaseException as exc:
            if self._control is not None and not self._control.closed and self._recorded():
                self.finish("failed", str(exc))
            self.close()
            raise
        return self

    def _recorded(self) -> bool:
        return ledger.phase_run_recorded(self.control, self.run_id)

    def finish(self, outcome: str, message: str | None = None) -> None:
        """Record how the run ended (once; later calls are ignored) and release the change's lock."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        if self.outcome is not None or self._control is None or self._control.closed:
            return
        self.outcome = outcome
        ledger.finish_phase_run(self.control, self.run_id, outcome, message)
        ledger.unlock_change(self.control, self.plan.change.id)

    def close(self) -> None:
        for c in (self._worker, self._control):
            if c is not None and not c.closed:
                c.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.finish("failed" if isinstance(exc, Exception) else "interrupted", str(exc))
        else:
            self.finish("succeeded")
        self.close()

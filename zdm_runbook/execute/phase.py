"""One phase, end to end: every setting checked first, then the ledger, the change's lock, and the
guarded steps (:class:`~zdm_runbook.execute.executor.Executor`), backfills through the engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from zdm_runbook.core.connect import resolve_dsn
from zdm_runbook.execute.attempts import StepResult
from zdm_runbook.execute.executor import BackfillRunner, Executor
from zdm_runbook.execute.guard import GuardSettings, settings_from, step_settings_from
from zdm_runbook.execute.session import PhaseSession
from zdm_runbook.plan.planner import Plan
from zdm_runbook.spec.model import Phase


def execute_phase(
    plan: Plan,
    phase: Phase | str,
    dsn: str | None = None,
    *,
    env: str | None = None,
    settings: Mapping[str, Any] | GuardSettings | None = None,
    step_settings: Mapping[str, Mapping[str, Any]] | None = None,
    backfill: BackfillRunner | None = None,
    backfill_settings: Mapping[str, Any] | None = None,
    on_batch: Callable[[Any], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> list[StepResult]:
    """Run one phase of ``plan`` with guards: every setting is checked first, then the ledger is
    created or upgraded, the change is locked against a concurrent run, and the steps run in order.

    Backfill steps run through :mod:`zdm_runbook.execute.backfill` (``backfill_settings``, progress to
    ``on_batch``, by default a log line every few seconds) unless ``backfill`` replaces it.
    """
    from zdm_runbook.execute import fill_runner as engine  # noqa: PLC0415 - the engine needs pandas only when a phase runs
    from zdm_runbook.execute.progress import LogProgress  # noqa: PLC0415

    p = Phase(phase)
    base = settings if isinstance(settings, GuardSettings) else settings_from(settings)
    per_step = step_settings_from(step_settings, base, [st.key for st in plan.for_phase(p)])
    fill_settings = engine.backfill_settings(backfill_settings)
    conninfo = resolve_dsn(dsn, env)
    if backfill is None:
        backfill = engine.runner(
            conninfo, plan.change.id, fill_settings, on_batch or LogProgress(fill_settings.log_every)
        )
    with PhaseSession(plan, p, conninfo, parameters={"guard": base.to_dict()}) as session:
        executor = Executor(
            session.worker,
            session.control,
            plan,
            settings=base,
            step_settings=per_step,
            backfill=backfill,
            on_event=on_event,
            run_id=session.run_id,
        )
        return executor.run_phase(p)

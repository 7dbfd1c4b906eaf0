"""What the guarded executor calls for a migrate phase's backfill steps: the engine, then each
step's summary and its verification over the whole table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zdm_runbook.execute.backfill import BackfillEngine, BackfillError, Listener
from zdm_runbook.execute.fill_settings import BackfillSettings, backfill_settings
from zdm_runbook.execute.verify import verify
from zdm_runbook.plan.steps import Step

__all__ = ["backfill_settings", "runner"]


def runner(
    dsn: str,
    change_id: str,
    settings: BackfillSettings | None = None,
    on_batch: Listener | None = None,
) -> Callable[[Sequence[Step]], None]:
    """What the guarded executor calls for backfill steps on one table: run them to completion in
    one pass, print each one's summary, then verify each over the whole table (a mismatch fails,
    with a sample of keys)."""

    def run(steps: Sequence[Step]) -> None:
        engine = BackfillEngine(dsn, change_id, steps, settings, on_batch)
        try:
            engine.run()
            for state in engine.states:
                print(state.summary(), flush=True)
            for step, spec, state in zip(engine.steps, engine.walk.specs, engine.states, strict=True):
                conn = engine._connect()
                state.doing = "verifying the whole table"
                check = verify(conn, spec)
                state.doing = "verified" if check.ok else "NOT verified"
                print(check, flush=True)
                if not check.ok:
                    raise BackfillError(f"backfill {step.key} done but {check}")
        finally:
            engine.close()

    return run

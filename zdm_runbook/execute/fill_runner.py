"""What the guarded executor calls for a migrate phase's backfill steps: the engine, then each
step's summary and its verification over the whole table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zdm_runbook.execute.backfill import BackfillEngine, BackfillError, Listener
from zdm_runbook.execute.fill_settings import BackfillSettings, backfill_settings
from zdm_runbook.execute.verify import verify_all
from zdm_runbook.plan.steps import Step

__all__ = ["backfill_settings", "runner"]

# Rows per verification read: alone, large reads; beside the app, reads of a few milliseconds, as
# the pass's batches are (under pgbench's TPC-B a 20,000-row read took about 55 ms of a core).
IDLE_READ, SHARED_READ = 20_000, 2_000


def runner(
    dsn: str,
    change_id: str,
    settings: BackfillSettings | None = None,
    on_batch: Listener | None = None,
) -> Callable[[Sequence[Step]], None]:
    """What the guarded executor calls for backfill steps on one table: run them to completion in
    one pass, print each one's summary, then verify them all in one walk of the whole table (a
    mismatch fails, with a sample of keys)."""

    def run(steps: Sequence[Step]) -> None:
        engine = BackfillEngine(dsn, change_id, steps, settings, on_batch)
        try:
            engine.run()
            for state in engine.states:
                print(state.summary(), flush=True)
            for state in engine.states:
                state.doing = "verifying the whole table"
            # Beside the app, smaller reads at the duty the pass ended with; alone, at full speed.
            shared = engine.state.app_busy and engine.settings.busy_duty < 1.0
            checks = verify_all(
                engine._connect(),
                engine.walk.specs,
                batch_size=SHARED_READ if shared else IDLE_READ,
                rest=engine.duty.pause_after if shared else None,
            )
            for step, state, check in zip(engine.steps, engine.states, checks, strict=True):
                state.doing = "verified" if check.ok else "NOT verified"
                print(check, flush=True)
                if not check.ok:
                    raise BackfillError(f"backfill {step.key} done but {check}")
        finally:
            engine.close()

    return run

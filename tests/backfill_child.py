"""Run one backfill to completion in its own process (so a test can SIGKILL it mid-batch)."""

from __future__ import annotations

import sys

from zdm_runbook.execute.backfill import BackfillEngine, backfill_settings
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change

SPEC = """
change: fill-w
operations:
  - backfill: {table: big, set: {w: "v * 2 + 1"}}
"""

if __name__ == "__main__":
    plan = build_plan(parse_change(SPEC))
    settings = backfill_settings({"max_batch_size": 1000, "pause": "5ms"})
    engine = BackfillEngine(
        sys.argv[1], "fill-w", plan.steps[0], settings, lambda s: print(len(s.batches), flush=True)
    )
    state = engine.run()
    print(state.summary(), flush=True)

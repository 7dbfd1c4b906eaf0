"""What the live progress view costs a backfill in a notebook kernel, side by side in one run.

The same backfill (one column of a 1,000,000-row table, fixed 100-row batches: many batches, as in
the issue's report) runs in one real IPython kernel, started with jupyter_client, three ways:

  headless   the log line every 5 s that ``zdm run`` prints (no widgets): the limit
  per-batch  the view as it was before: bar and line set on every batch, chart redrawn every 3 s
             through an Output widget (the naive way)
  ours       :class:`zdm_runbook.notebook.widgets.WidgetProgress`: the engine only hands over its
             state; a ticker thread draws the bar and line 4 times a second, the chart when due

The client reads every message the kernel sends on IOPub, as JupyterLab does, and counts the
widget messages (``comm_msg``) and their bytes: what would cross the websocket to the browser.

    python bench/notebook_progress.py                  # 1,000,000 rows, 3 rounds
    python bench/notebook_progress.py --rows 200000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from backfill import reset, setup  # bench/backfill.py: the same table, reset the same way
from jupyter_client.manager import KernelManager

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir

SPEC = 'change: {cid}\noperations:\n  - backfill: {{table: big, set: {{w: "v * 2 + 1"}}}}\n'
SETUP = """
import json, time, threading
from zdm_runbook import ledger
from zdm_runbook.core.connect import connect
from zdm_runbook.execute import backfill as engine
from zdm_runbook.execute.fill_runner import runner
from zdm_runbook.execute.progress import LogProgress, frame, line
from zdm_runbook.notebook.charts import backfill_figure, show
from zdm_runbook.notebook.widgets import WidgetProgress
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
import ipywidgets as widgets
from IPython.display import display

class PerBatch:
    '''The view before issue 14: widgets set on every batch, the chart redrawn every 3 s.'''
    def __init__(self):
        self.bar = widgets.FloatProgress(min=0.0, max=1.0, description="backfill")
        self.label, self.chart, self._last = widgets.HTML(), widgets.Output(), 0.0
        display(widgets.VBox([widgets.HBox([self.bar, self.label]), self.chart]))
    def __call__(self, state):
        total = state.rows_estimate or max(state.rows_scanned, 1)
        self.bar.value = min(1.0, state.rows_scanned / total)
        self.label.value = line(state)
        now = time.monotonic()
        if state.finished is not None or now - self._last >= 3.0:
            self._last = now
            with self.chart:
                self.chart.clear_output(wait=True)
                show(backfill_figure(frame(state), state.title))
    def close(self):
        pass

def fill(dsn, spec, mode):
    plan = build_plan(parse_change(spec))
    step = plan.steps[0]
    with connect(dsn, autocommit=True) as c:
        ledger.ensure(c)
        ledger.record_change(c, plan.change.id, "bench", "bench", {})
    view = {"headless": lambda: LogProgress(5.0), "per-batch": PerBatch,
            "ours": lambda: WidgetProgress(step.key)}[mode]()
    states = []
    def on_batch(state):
        states.append(state)
        view(state)
    settings = engine.BackfillSettings(start_batch_size=100, min_batch_size=100, max_batch_size=100)
    started = time.monotonic()
    runner(dsn, plan.change.id, settings, on_batch)([step])
    seconds = time.monotonic() - started
    if hasattr(view, "close"):
        view.close()
    state = states[-1]
    print("RESULT " + json.dumps({"rows": state.rows_scanned, "batches": len(state.batches),
                                  "fill_s": state.elapsed, "rate": state.rate, "step_s": seconds}))
"""


def run(client: Any, code: str) -> tuple[dict[str, Any], int, int]:
    """Execute ``code``; read IOPub until idle; return its RESULT line and the widget messages/bytes."""
    msg_id = client.execute(code)
    result: dict[str, Any] = {}
    count = size = 0
    while True:
        msg = client.get_iopub_msg(timeout=600)
        if msg["parent_header"].get("msg_id") != msg_id and msg["msg_type"] != "comm_msg":
            continue
        kind = msg["msg_type"]
        if kind == "comm_msg":
            count += 1
            size += len(json.dumps(msg["content"])) + sum(len(b) for b in msg.get("buffers", []))
        elif kind == "stream" and "RESULT " in msg["content"]["text"]:
            result = json.loads(msg["content"]["text"].split("RESULT ", 1)[1].splitlines()[0])
        elif kind == "error":
            raise RuntimeError("\n".join(msg["content"]["traceback"]))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return result, count, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    server = LocalServer(Path(tempfile.mkdtemp(prefix="zdm-bench-")) / "pg", embedded_bin_dir())
    dsn = server.start()
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    client = km.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    try:
        setup(dsn, args.rows)
        run(client, SETUP)
        modes = ("headless", "per-batch", "ours")
        seen: dict[str, list[tuple[float, int, int, int]]] = {m: [] for m in modes}
        for n in range(args.rounds):
            for mode in modes:  # interleaved: each round runs all three on the same server state
                reset(dsn)
                spec = SPEC.format(cid=f"bench-{mode}-{n}")
                result, count, size = run(client, f"fill({dsn!r}, {spec!r}, {mode!r})")
                seen[mode].append((result["rate"], result["batches"], count, size))
                print(
                    f"round {n + 1} {mode:<10} {result['rate']:>9,.0f} rows/s"
                    f"  {result['batches']:>6,} batches  {count:>6,} widget msgs  {size / 1e6:6.2f} MB",
                    flush=True,
                )
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
        server.destroy()
    print()
    print(f"{'mode':<10} {'rows/s (worst)':>15} {'rows/s (median)':>16} {'msgs/s':>8} {'MB':>7}")
    limit = min(r for r, *_ in seen["headless"])
    for mode in modes:
        rates = [r for r, *_ in seen[mode]]
        msgs = statistics.median(c / (b * 100 / r) for r, b, c, _ in seen[mode])  # per second of backfill
        mb = statistics.median(s for *_, s in seen[mode]) / 1e6
        print(f"{mode:<10} {min(rates):>15,.0f} {statistics.median(rates):>16,.0f} {msgs:>8.1f} {mb:>7.2f}")
    worst = {m: min(r for r, *_ in seen[m]) for m in modes}
    print(
        f"\nworst of {args.rounds}: ours / headless = {worst['ours'] / limit:.2f},"
        f" per-batch / headless = {worst['per-batch'] / limit:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

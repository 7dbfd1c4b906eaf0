"""Where the app's p99 during our backfill comes from: which of its slow transactions met a batch of
ours, and what a core of its own changes, side by side in one run.

The app is ``bench/backfill.py``'s (pgbench at a fixed rate, a point read and an update of the
table being backfilled); ours is the engine with its defaults. Each transaction of the app is
marked by whether a batch of ours was running when it was due (a batch from its BEGIN to its
COMMIT's answer, timed around the engine's own batch). Its start, not its span: a transaction
that was slow for any reason spans more batches, so "was in flight during a batch" would mark
the slow ones whatever made them slow. Printed per run and placement:

  in batches   ours' share of the pass's wall time spent in batches
  met          the app's transactions due while a batch ran, as a share of all during the pass
  p99          the app alone just before (base), during the pass (all, and its ratio to base),
               of the transactions due while a batch ran (met) and of the rest (free)
  slow         transactions over 1.5x the base p99, and how many of them were due in a batch

Two placements, in rotated order each run:

  shared  as the kernel places them: pgbench, the app's backends, our client and our backend
          on the machine's cores
  split   pgbench and the app's backends on CPU 1, our client and our batches' backend on
          CPU 0 (``sched_setaffinity``; the app is placed before its baseline is taken), as if
          the server had a core to spare for each; the server's own processes and our sampler's
          backend stay where the kernel puts them

If the slow transactions are those that met a batch, and a core apiece takes their tail away,
then the app's p99 is made by waiting for a core that our batch holds: the kernel's scheduler,
not a lock, the WAL or the I/O. An engine can then only make its batches rarer or shorter.

    python bench/app_tail.py                         # 1,000,000 rows, 3 runs, embedded PostgreSQL
    python bench/app_tail.py --rows 300000 --runs 2
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from backfill import SPEC, App, at_least, ours_ledger, p99, reset, setup, throwaway

from zdm_runbook.execute.backfill import BackfillEngine, backfill_settings
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change

PLACEMENTS = ("shared", "split")
OURS_CPU, APP_CPU = 0, 1
SLOW = 1.5  # a transaction over this times the base p99 is slow


class PlacedEngine(BackfillEngine):
    """The engine with its own backend moved to ``cpu`` as soon as it connects (None: left), and
    each batch's span on the clock, from its BEGIN to its COMMIT's answer."""

    cpu: int | None = None
    spans: list[tuple[float, float]]

    def _batch(self, *args: Any) -> Any:
        started = time.monotonic()
        batch = super()._batch(*args)
        if batch is not None:
            self.spans.append((started, time.monotonic()))
        return batch

    def _connect(self) -> Any:
        fresh = self.conn is None or self.conn.closed or self.conn.broken
        conn = super()._connect()
        if fresh and self.cpu is not None:
            os.sched_setaffinity(conn.info.backend_pid, {self.cpu})
        return conn


def place_app(dsn: str, app: App) -> None:
    """pgbench and the app's backends onto APP_CPU."""
    os.sched_setaffinity(app.proc.pid, {APP_CPU})
    with psycopg.connect(dsn, autocommit=True) as conn:
        for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'"):
            os.sched_setaffinity(pid, {APP_CPU})


def one(dsn: str, rows: int, rate: int, folder: Path, placement: str) -> dict[str, Any]:
    """A pass of ours under the app in one placement; the app's transactions, marked."""
    reset(dsn)
    ours_ledger(dsn)
    every = os.sched_getaffinity(0)
    app = App(dsn, rows, rate, 8 + rows / 40_000, folder)  # past the pass at 40,000 rows/s
    time.sleep(2)
    if placement == "split":
        place_app(dsn, app)
        os.sched_setaffinity(0, {OURS_CPU})
    try:
        quiet = time.time()
        time.sleep(4)
        engine = PlacedEngine(
            dsn, "bench-fill", build_plan(parse_change(SPEC)).steps[0], backfill_settings({})
        )
        engine.cpu, engine.spans = (OURS_CPU if placement == "split" else None), []
        offset = time.time() - time.monotonic()
        start = time.time()
        try:
            state = engine.run()
            end = time.time()
        finally:
            engine.close()
    finally:
        os.sched_setaffinity(0, every)
    batches = [(begun + offset, ended + offset) for begun, ended in engine.spans]
    starts = [b[0] for b in batches]

    def met(due: float) -> bool:
        k = bisect.bisect_right(starts, due)  # the last batch begun by then
        return k > 0 and batches[k - 1][1] > due

    during = [(met(due), ms) for due, ms in app.transactions(start, end)]
    base = p99(app.latencies(quiet, start))
    return {
        "placement": placement,
        "busy": sum(b - a for a, b in batches) / (end - start),
        "tx": len(during),
        "met": [ms for m, ms in during if m],
        "free": [ms for m, ms in during if not m],
        "base": base,
        "rows_per_s": state.rows_updated / (end - start),
    }


def line(run: int, r: dict[str, Any]) -> str:
    every = r["met"] + r["free"]
    slow = [ms for ms in every if ms > SLOW * r["base"]]
    slow_met = [ms for ms in r["met"] if ms > SLOW * r["base"]]
    ratio = p99(every) / r["base"]
    return (
        f"  {run:<5}{r['placement']:<9}{100 * r['busy']:>9.0f}%{r['rows_per_s']:>10,.0f}"
        f"{r['tx']:>7,}{100 * len(r['met']) / max(1, r['tx']):>6.0f}%"
        f"{r['base']:>8.2f}{p99(every):>7.2f}{ratio:>6.2f}x"
        f"{p99(r['met']) if r['met'] else float('nan'):>8.2f}"
        f"{p99(r['free']) if r['free'] else float('nan'):>7.2f}"
        f"{len(slow):>7}{len(slow_met):>6}"
    )


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=at_least(10_000), default=1_000_000, help="table rows (1,000,000)")
    p.add_argument("--runs", type=at_least(1), default=3, help="runs, each in both placements (3)")
    p.add_argument("--app-rate", type=at_least(1), default=200, help="app tx/s (200)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        print("app_tail.py needs two CPUs and sched_setaffinity (Linux)", file=sys.stderr)
        return 2
    server, dsn, folder = throwaway("zdm-tail")
    try:
        print(f"{args.rows:,} rows, the app at {args.app_rate} tx/s; ms are the app's latencies")
        setup(dsn, args.rows)
        print(
            f"  {'run':<5}{'placed':<9}{'in batches':>10}{'rows/s':>10}{'app tx':>7}{'met':>7}"
            f"{'p99: base':>10}{'all':>6}{'x':>6}{'met':>9}{'free':>7}{'slow':>7}{'met':>6}"
        )
        for run in range(1, args.runs + 1):
            order = PLACEMENTS if run % 2 else PLACEMENTS[::-1]
            for placement in order:
                print(line(run, one(dsn, args.rows, args.app_rate, folder, placement)), flush=True)
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())

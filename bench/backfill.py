"""Backfill throughput and app impact, side by side in one run, on one table (1,000,000 rows).

Variants, each filling ``w = v * 2 + 1`` on the whole table after it is reset:

  single   one UPDATE of the whole table: the physical limit (and one long transaction)
  pgroll   fixed 1,000-row keyset batches, no pause (pgroll's default)
  gitlab   1,000-row batches in 100-row sub-batches with a 100 ms pause after each (GitLab's
           batched background migrations); stopped after --max-seconds and rated on what it did
  ours     zdm-runbook's engine with its defaults
  alone    no backfill at all, under load only: the app alone, taken exactly as a variant is and
           for as long as ``ours`` ran (--max-seconds without it). Its "p99 vs baseline" is the
           spread the machine gives by itself (an A/A control): a variant's ratio means little
           until it is well beyond this one's

First without load: rows/s and the ratio to ``single``. Then with the app's load: pgbench (the
embedded PostgreSQL's own client) runs a custom script of point reads and updates on the same
table at a fixed rate, and the app's p99 latency while each variant runs is compared to its p99
without a backfill, taken in the seconds just before each variant's run in the same pgbench run
and pooled over the whole run (so a noisy stretch of the machine weighs on both sides). Beside
each, the share of the machine's CPU time the host stole while it ran (``/proc/stat``'s steal):
on a virtual machine whose host is busy, a window with much of it is slow whatever runs. Last,
the peak memory (max RSS) of the backfill process at two table sizes.

    python bench/backfill.py                     # 1,000,000 rows, throw-away embedded PostgreSQL
    python bench/backfill.py --rows 200000 --max-seconds 10
    python bench/backfill.py --rows 300000 --windows 4   # each p99 pooled over 4 runs under load
    python bench/backfill.py --rows 100000 --windows 3 --min-app-tx 3000   # more runs until 3,000 tx
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from zdm_runbook import ledger
from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.execute.backfill import BackfillEngine, backfill_settings
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change

SPEC = 'change: bench-fill\noperations:\n  - backfill: {table: big, set: {w: "v * 2 + 1"}}\n'
APP_SCRIPT = """\\set id random(1, {rows})
SELECT v, w FROM big WHERE id = :id;
UPDATE big SET hits = hits + 1 WHERE id = :id;
"""
SET_W = "UPDATE big SET w = v * 2 + 1 WHERE {cond} AND w IS DISTINCT FROM v * 2 + 1"


def setup(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS big")
        c.execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, w bigint, hits int NOT NULL DEFAULT 0)"
        )
        c.execute("INSERT INTO big (id, v) SELECT g, g %% 100000 FROM generate_series(1, %s) g", [rows])
        c.execute("VACUUM ANALYZE big")


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE big SET w = NULL")
        c.execute("VACUUM ANALYZE big")
        c.execute("DROP SCHEMA IF EXISTS zdm CASCADE")
        c.execute("CHECKPOINT")  # every variant starts right after one: equal full-page-write costs
    # The reset dirtied the whole table in the page cache; written back by the kernel over the next
    # 30 s it slowed the app in whatever ran then (the baseline, the variant): p99 per 2 s of the
    # app alone read 1.1 to 4.3 ms over the first 10 s after a reset, about 1.0 ms after a sync.
    os.sync()


def single(dsn: str, deadline: float) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(SET_W.format(cond="true")).rowcount


def keyset(dsn: str, deadline: float, batch: int = 1000, sub: int | None = None, pause: float = 0.0) -> int:
    """Fixed keyset batches (pgroll), or batches in sub-batches with a pause after each (GitLab)."""
    done, last = 0, 0
    with psycopg.connect(dsn, autocommit=True) as c:
        while time.monotonic() < deadline:
            row = c.execute(
                "SELECT max(id), count(*) FROM (SELECT id FROM big WHERE id > %s ORDER BY id LIMIT %s) b",
                [last, batch],
            ).fetchone()
            if row is None or row[0] is None:
                break
            upper = int(row[0])
            step = sub or batch
            low = last
            while low < upper:
                high = min(upper, low + step)
                done += c.execute(
                    "UPDATE big SET w = v * 2 + 1"
                    " WHERE id > %s AND id <= %s AND w IS DISTINCT FROM v * 2 + 1",
                    [low, high],
                ).rowcount
                low = high
                if pause:
                    time.sleep(pause)
            last = upper
    return done


OURS_SETTINGS: dict[str, Any] = {}


def ours_ledger(dsn: str) -> None:
    """The ledger exists before a backfill runs (a phase's preflight creates it): not timed."""
    with psycopg.connect(dsn, autocommit=True) as c:
        ledger.ensure(c)
        ledger.record_change(c, "bench-fill", "", "bench")


def ours(dsn: str, deadline: float) -> int:
    plan = build_plan(parse_change(SPEC))
    engine = BackfillEngine(dsn, "bench-fill", plan.steps[0], backfill_settings(OURS_SETTINGS))
    try:
        return engine.run().rows_updated
    finally:
        engine.close()


def alone(dsn: str, deadline: float) -> int:
    """No backfill: the app alone until the deadline (the A/A control)."""
    time.sleep(max(0.0, deadline - time.monotonic()))
    return 0


VARIANTS: dict[str, Callable[[str, float], int]] = {
    "single": single,
    "pgroll": keyset,
    "gitlab": lambda dsn, deadline: keyset(dsn, deadline, 1000, 100, 0.1),
    "ours": ours,
    "alone": alone,
}


def timed(dsn: str, name: str, max_seconds: float) -> dict[str, Any]:
    if name == "ours":
        ours_ledger(dsn)
    started = time.monotonic()
    rows = VARIANTS[name](dsn, started + max_seconds)
    seconds = time.monotonic() - started
    return {"variant": name, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "t0": started}


class App:
    """pgbench at a fixed rate with a per-transaction log.

    With ``--rate`` pgbench measures a transaction's latency (the log's third field) from when it
    was scheduled, not from when it began: the schedule lag (the seventh field) is part of it
    already, and the transaction was due at its end time minus that latency."""

    def __init__(self, dsn: str, rows: int, rate: int, seconds: float, folder: Path) -> None:
        script = folder / "app.sql"
        script.write_text(APP_SCRIPT.format(rows=rows))
        self.folder = folder
        self._due: list[tuple[float, float]] | None = None
        self.proc = subprocess.Popen(
            [
                str(embedded_bin_dir() / "pgbench"),
                "-n",
                "-f",
                str(script),
                "-c",
                "2",
                "-j",
                "1",
                "-R",
                str(rate),
                "-T",
                str(int(seconds)),
                "-l",
                "--log-prefix",
                str(folder / "applog"),
                dsn,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def latencies(self, start_epoch: float, end_epoch: float) -> list[float]:
        """Latencies (ms, from when each was scheduled) of transactions due within the window, however
        late they ended; the first call waits for the run to end and reads (and removes) its logs."""
        return [ms for _, ms in self.transactions(start_epoch, end_epoch)]

    def transactions(self, start_epoch: float, end_epoch: float) -> list[tuple[float, float]]:
        """(when due, latency in ms) of the transactions due within the window (see latencies)."""
        if self._due is None:
            self.proc.wait()
            self._due = self._read()
            for log in self.folder.glob("applog.*"):
                log.unlink()
        return [(due, ms) for due, ms in self._due if start_epoch <= due <= end_epoch]

    def _read(self) -> list[tuple[float, float]]:
        """(when the transaction was due, its latency in ms) for every line of the run's logs."""
        out = []
        for log in self.folder.glob("applog.*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                latency_us = int(parts[2])  # from when it was due: the schedule lag included
                due = int(parts[4]) + int(parts[5]) / 1e6 - latency_us / 1e6
                out.append((due, latency_us / 1000))  # due in the window, however late it ended
        return out


def cpu_times() -> tuple[int, int]:
    """(stolen, all) CPU time of the machine so far, in jiffies, from ``/proc/stat``: on a virtual
    machine the host's other guests take "steal" time, and a window with much of it is slowed
    whatever runs in it ((0, 0) where there is no ``/proc/stat``)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return (0, 0)
    values = [int(v) for v in first]
    return (values[7] if len(values) > 7 else 0, sum(values))


def stolen(times: list[int]) -> float:
    """The share (%) stolen of [stolen, all] CPU time summed from :func:`cpu_times` differences."""
    return 100 * times[0] / times[1] if times[1] > 0 else 0.0


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))] if ordered else float("nan")


def under_load(
    dsn: str,
    name: str,
    rows: int,
    rate: int,
    max_seconds: float,
    folder: Path,
    windows: int = 1,
    baseline_seconds: float = 4.0,
    min_app_tx: int = 0,
    max_windows: int = 10,
) -> dict[str, Any]:
    """Run ``name`` while pgbench plays the app; the app's latencies during it, and just before it.

    Each window starts one pgbench run at the fixed rate; after 2 s of warm-up the app's
    latencies are taken for ``baseline_seconds`` with nothing else running (its baseline), then
    while the variant runs, in the same pgbench run. So every variant's run has its baseline
    beside it in time: a noisy stretch of the machine weighs on both, and the baseline of the
    whole run is pooled from all of them. With ``windows`` > 1 the variant runs that many times,
    the table reset before each, and the app's latencies are pooled: a p99 of the few hundred
    transactions one short run meets is its second or third worst, and moves by half from one
    run to the next. With ``min_app_tx``, more runs follow until the app has met that many
    transactions during the variant (at most ``max_windows`` runs in all): a short backfill at
    200 tx/s meets a few hundred a run, and its p99 says little (the A/A control of such runs
    read 0.41 to 2.44x)."""
    lat: list[float] = []
    base: list[float] = []
    rows_done, seconds, i = 0, 0.0, 0
    steal = {"baseline": [0, 0], "variant": [0, 0]}  # stolen, all: summed over the runs
    while i < windows or (len(lat) < min_app_tx and i < max_windows):
        if i:
            reset(dsn)
        app = App(dsn, rows, rate, 2.0 + baseline_seconds + max_seconds + 4, folder)
        time.sleep(2.0)
        quiet, at_quiet = time.time(), cpu_times()
        time.sleep(baseline_seconds)
        start, at_start = time.time(), cpu_times()
        result = timed(dsn, name, max_seconds)
        end, at_end = time.time(), cpu_times()
        for side, (a, b) in (("baseline", (at_quiet, at_start)), ("variant", (at_start, at_end))):
            steal[side][0] += b[0] - a[0]
            steal[side][1] += b[1] - a[1]
        lat += app.latencies(start, end)
        base += app.latencies(quiet, start)
        rows_done += result.get("rows", 0)
        seconds += result.get("seconds", 0.0)
        i += 1
    speed = {"rows": rows_done, "seconds": seconds, "rows_per_s": rows_done / seconds} if seconds else {}
    return {
        "variant": name,
        **speed,
        "windows": i,
        "app_tx": len(lat),
        "app_p99_ms": p99(lat),
        "app_p50_ms": statistics.median(lat),
        "baseline": base,
        "steal_pct": stolen(steal["variant"]),  # pooled like the p99
        "baseline_steal": steal["baseline"],
    }


def peak_memory(dsn: str, rows: int) -> float:
    """Max RSS (MB) of a fresh process that runs our backfill on a table of ``rows`` rows."""
    setup(dsn, rows)
    reset(dsn)
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[2]); from backfill import ours, ours_ledger;"
        " ours_ledger(sys.argv[1]); ours(sys.argv[1], 0);"
        " print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, dsn, str(Path(__file__).resolve().parent)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.split()[-1]) / 1024


def print_loaded(loaded: list[dict[str, Any]], app_rate: int, baseline_seconds: float) -> None:
    """The table under load: each variant's p99 against the baseline pooled beside all of them."""
    quiet_lat = [ms for r in loaded for ms in r["baseline"]]
    base = p99(quiet_lat)
    baseline = {"variant": "baseline", "app_tx": len(quiet_lat), "app_p99_ms": base}
    baseline["app_p50_ms"] = statistics.median(quiet_lat)
    pooled = [sum(r["baseline_steal"][k] for r in loaded) for k in (0, 1)]
    baseline["steal_pct"] = stolen(pooled)
    print(f"\nwith the app's load (pgbench, {app_rate} tx/s: point read + update, same table)")
    header = f"{'variant':<10}{'rows/s':>10}{'app tx':>8}{'p50 ms':>9}{'p99 ms':>9}{'p99 vs baseline':>17}"
    print(f"  {header}{'CPU stolen':>12}")
    for r in [baseline, *loaded]:
        rate = f"{r['rows_per_s']:,.0f}" if r.get("rows_per_s") else "-"
        p50, p99_ms = r["app_p50_ms"], r["app_p99_ms"]
        name, count, steal = r["variant"], r["app_tx"], r["steal_pct"]
        cells = f"{name:<10}{rate:>10}{count:>8}{p50:>9.2f}{p99_ms:>9.2f}{p99_ms / base:>16.2f}x"
        print(f"  {cells}{steal:>11.1f}%")
    before = [(r["variant"], r["app_p99_ms"], p99(r["baseline"])) for r in loaded]
    beside = ", ".join(f"{name} {ms:.2f}" for name, _, ms in before)
    paired = ", ".join(f"{name} {during / ms:.2f}x" for name, during, ms in before)
    print(
        f"  baseline: the {baseline_seconds:g} s before each run, pooled; p99 (ms) of the"
        f" part before each variant: {beside}"
    )
    print(f"  p99 vs only the part just before it (a noisy stretch there weighs on one variant): {paired}")


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``least`` (argparse names the flag)."""

    def read(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    read.__name__ = f"whole number >= {least}"
    return read


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: a bad value stops here, naming its flag, before any server starts."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=at_least(1), default=1_000_000, help="rows in the table (1000000)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop a variant after this long (20)")
    parser.add_argument(
        "--app-rate", type=at_least(1), default=200, help="app transactions per second under load (200)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--repeat", type=at_least(1), default=3, help="runs per variant without load; the median counts (3)"
    )
    parser.add_argument(
        "--ours", default="{}", help='backfill settings for ours, as JSON (e.g. {"pause": "10ms"})'
    )
    parser.add_argument(
        "--windows",
        type=at_least(1),
        default=1,
        help="runs per variant under load, the app's latencies pooled (1: one run, as before)",
    )
    parser.add_argument(
        "--min-app-tx",
        type=at_least(0),
        default=0,
        help="under load, more runs per variant until the app met this many transactions during it,"
        " at most --max-windows runs (0: just --windows runs)",
    )
    parser.add_argument(
        "--max-windows",
        type=at_least(1),
        default=10,
        help="at most this many runs per variant under load (10)",
    )
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=4.0,
        help="seconds of the app alone just before each run under load, pooled as the baseline (4)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    return args


def throwaway(prefix: str) -> tuple[LocalServer, str, Path]:
    """A started throw-away embedded PostgreSQL, its DSN, and a folder for the app's logs."""
    server = LocalServer(Path(tempfile.mkdtemp(prefix=f"{prefix}-")) / "pg", embedded_bin_dir())
    return server, server.start(), Path(tempfile.mkdtemp(prefix=f"{prefix}-app-"))


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as c:
        row = c.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    OURS_SETTINGS.update(json.loads(args.ours))
    server, dsn, folder = throwaway("zdm-bench")
    try:
        print(f"backfill of {args.rows:,} rows on PostgreSQL {server_version(dsn)}", flush=True)
        setup(dsn, args.rows)
        chosen = [v for v in VARIANTS if v in args.variants.split(",")]
        quiet = []
        for name in [v for v in chosen if v != "alone"]:  # the median of --repeat runs: ±10% on 2 cores
            runs = []
            for _ in range(args.repeat):
                reset(dsn)
                runs.append(timed(dsn, name, args.max_seconds))
            quiet.append(sorted(runs, key=lambda r: r["rows_per_s"])[len(runs) // 2])
        if quiet:  # none with --variants alone: the control has no table without load
            limit = quiet[0]["rows_per_s"]
            print(f"\nwithout load (median of {args.repeat})")
            print(f"  {'variant':<10}{'rows':>11}{'seconds':>9}{'rows/s':>10}{'vs single':>11}")
            for r in quiet:
                ratio = r["rows_per_s"] / limit
                name, rows, secs, speed = r["variant"], r["rows"], r["seconds"], r["rows_per_s"]
                print(f"  {name:<10}{rows:>11,}{secs:>9.1f}{speed:>10,.0f}{ratio:>10.2f}x")
        loaded: list[dict[str, Any]] = []
        for name in chosen:
            reset(dsn)
            # The control lasts as long as ours did, so its p99 is of as many transactions.
            ran = [r["seconds"] / r["windows"] for r in loaded if r["variant"] == "ours"]
            seconds = ran[0] if name == "alone" and ran else args.max_seconds
            loaded.append(
                under_load(
                    dsn,
                    name,
                    args.rows,
                    args.app_rate,
                    seconds,
                    folder,
                    args.windows,
                    args.baseline_seconds,
                    args.min_app_tx,
                    max(args.windows, args.max_windows),
                )
            )
        print_loaded(loaded, args.app_rate, args.baseline_seconds)
        if not args.no_memory:
            small, large = args.rows // 5, args.rows
            mem_small, mem_large = peak_memory(dsn, small), peak_memory(dsn, large)
            print(f"\npeak memory of the backfill process (max RSS): {small:,} rows {mem_small:.0f} MB,")
            print(f"  {large:,} rows {mem_large:.0f} MB")
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())

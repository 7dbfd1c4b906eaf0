"""What any work on the other core costs the app's queries on this machine: the floor under every
engine's "p99 within 1.5x", side by side in one run.

The app is one session running a fixed point read and update (pgbench's TPC-B account step) in a
loop; it and its server backend are pinned to CPU 1, so it never waits for a core. CPU 0 is then:

  idle       nothing of ours
  burner     a Python loop (no PostgreSQL, no memory traffic to speak of)
  batches    500-row keyset UPDATEs of another table back to back, in a backend pinned to CPU 0
             (a backfill at full duty)

If the two vCPUs were independent, the app's latency would not move. On a virtual machine whose
vCPUs share a physical core (SMT siblings on the host), or its caches and memory bandwidth, every
query the app runs while CPU 0 works is slower, however the work is scheduled. Rounds rotate the
order; each variant's p50 and p99 are against ``idle`` in the same round.

    python bench/cpu_floor.py                   # 3 rounds of 4 s per variant, embedded PostgreSQL 18
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from backfill import at_least, p99  # a sibling bench script: bench/ is the script's sys.path[0]

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir

VARIANTS = ("idle", "burner", "batches")
ROWS = 1_000_000


def burn() -> None:
    os.sched_setaffinity(0, {0})
    while True:
        pass


def batches(dsn: str, stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        (pid,) = c.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        os.sched_setaffinity(pid, {0})
        low = 0
        while not stop.is_set():
            c.execute("UPDATE other SET w = coalesce(w, 0) + 1 WHERE id > %s AND id <= %s", [low, low + 500])
            low = (low + 500) % ROWS


def app(dsn: str, seconds: float) -> list[float]:
    """Milliseconds per app transaction (update and read of one account), for ``seconds``."""
    os.sched_setaffinity(0, {1})
    took: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as c:
        (pid,) = c.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        os.sched_setaffinity(pid, {1})
        aid, end = 1, time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            with c.transaction():
                c.execute("UPDATE accounts SET abalance = abalance + 1 WHERE aid = %s", [aid])
                c.execute("SELECT abalance FROM accounts WHERE aid = %s", [aid])
            took.append((time.perf_counter() - started) * 1000)
            aid = aid * 7919 % 100_000 + 1
    return took


def measure(dsn: str, variant: str, seconds: float) -> list[float]:
    stop = threading.Event()
    worker: threading.Thread | multiprocessing.Process | None = None
    if variant == "burner":
        worker = multiprocessing.Process(target=burn, daemon=True)
    elif variant == "batches":
        worker = threading.Thread(target=batches, args=(dsn, stop), daemon=True)
    if worker is not None:
        worker.start()
        time.sleep(0.3)
    try:
        return app(dsn, seconds)
    finally:
        stop.set()
        if isinstance(worker, multiprocessing.Process):
            worker.kill()
        if worker is not None:
            worker.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=at_least(1), default=3, help="rounds, the order rotated (3)")
    parser.add_argument(
        "--seconds", type=at_least(1), default=4, help="seconds of app per variant and round (4)"
    )
    args = parser.parse_args(argv)
    if os.cpu_count() != 2 or not hasattr(os, "sched_setaffinity"):
        sys.exit("cpu_floor.py: needs exactly 2 CPUs and sched_setaffinity (Linux)")
    with tempfile.TemporaryDirectory(prefix="zdm-bench-") as folder:
        server = LocalServer(data_dir=Path(folder) / "pg", bin_dir=embedded_bin_dir())
        dsn = server.start()
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("CREATE TABLE accounts (aid int PRIMARY KEY, abalance int NOT NULL DEFAULT 0)")
                c.execute("INSERT INTO accounts (aid) SELECT generate_series(1, 100000)")
                c.execute("CREATE TABLE other (id int PRIMARY KEY, w int)")
                c.execute("INSERT INTO other (id) SELECT generate_series(1, %s)", [ROWS])
                c.execute("VACUUM ANALYZE")
                c.execute("CHECKPOINT")
            os.sync()
            print(f"{server.version()}: the app pinned to CPU 1; CPU 0 idle, burning, or running batches")
            print(f"  {'round':<7}{'CPU 0':<9}{'tx':>7}{'p50 ms':>9}{'p99 ms':>9}{'p50 x':>8}{'p99 x':>8}")
            ratios: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
            for r in range(args.rounds):
                got = {}
                for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                    got[variant] = measure(dsn, variant, args.seconds)
                base = got["idle"]
                for variant in VARIANTS:
                    took = got[variant]
                    x50 = statistics.median(took) / statistics.median(base)
                    x99 = p99(took) / p99(base)
                    ratios[variant].append((x50, x99))
                    print(
                        f"  {r + 1:<7}{variant:<9}{len(took):>7,}{statistics.median(took):>9.3f}"
                        f"{p99(took):>9.3f}{x50:>7.2f}x{x99:>7.2f}x"
                    )
            for variant in VARIANTS[1:]:
                fifty = [x for x, _ in ratios[variant]]
                ninety_nine = [y for _, y in ratios[variant]]
                print(
                    f"  {variant}: p50 {min(fifty):.2f} to {max(fifty):.2f}x,"
                    f" p99 {min(ninety_nine):.2f} to {max(ninety_nine):.2f}x the idle core's"
                )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What an index build costs the app, by the parallel workers it may start, side by side in one run.

pgbench's TPC-B-like script runs at a fixed rate (half of the throughput it measures at full speed
first), as production runs, on ``pgbench_accounts`` (``--scale`` x 100,000 rows). In each round,
``CREATE INDEX CONCURRENTLY`` on ``abalance`` runs once per variant, in rotated order, each after
``--alone`` seconds of the app alone (the baseline beside it in time), and the index is dropped:

  default   ``max_parallel_maintenance_workers = 2``: PostgreSQL's default, what a plain build gets
  ours      0: ``index_build_workers``' default, the build in its own backend alone

Printed per build: its seconds, and the app's transactions, p50, p99 and longest transaction while
it ran and in the stretch before it, with the ratios; then the worst round of each variant.

    python bench/index_build.py                       # scale 10, 3 rounds, embedded PostgreSQL 18
    python bench/index_build.py --pg-bin /usr/lib/postgresql/15/bin
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from backfill import at_least  # siblings: bench/ is the script's sys.path[0]
from pgbench_migration import Windows, full_speed, init, under_pgbench

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir

VARIANTS = {"default": 2, "ours": 0}


def builds(dsn: str, rounds: int, alone: float) -> tuple[list[str], Callable[[Windows], None]]:
    """The work under pgbench: per round and variant, the app alone, then the build."""
    order: list[str] = []

    def run(windows: Windows) -> None:
        names = list(VARIANTS)
        for r in range(rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                with psycopg.connect(dsn, autocommit=True, application_name="zdm_runbook-bench") as c:
                    c.execute(
                        "SELECT set_config('max_parallel_maintenance_workers', %s, false)",
                        [str(VARIANTS[name])],
                    )
                    start = time.time()
                    time.sleep(alone)
                    windows.append((f"{r + 1} {name} before", start, time.time()))
                    start = time.time()
                    c.execute("CREATE INDEX CONCURRENTLY bench_abalance_idx ON pgbench_accounts (abalance)")
                    windows.append((f"{r + 1} {name} build", start, time.time()))
                    c.execute("DROP INDEX bench_abalance_idx")
                order.append(f"{r + 1} {name}")

    return order, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", type=at_least(1), default=10, help="pgbench scale: 100,000 accounts each (10)"
    )
    parser.add_argument("--clients", type=at_least(1), default=4, help="pgbench clients (4)")
    parser.add_argument("--rounds", type=at_least(1), default=3, help="builds per variant, order rotated (3)")
    parser.add_argument(
        "--alone", type=float, default=3.0, help="seconds of the app alone before each build (3)"
    )
    parser.add_argument("--pg-bin", type=Path, help="PostgreSQL binaries (default: the embedded ones)")
    args = parser.parse_args(argv)
    if args.alone <= 0:
        parser.error("--alone: must be more than 0 seconds")
    with tempfile.TemporaryDirectory(prefix="zdm-bench-") as folder:
        server = LocalServer(data_dir=Path(folder) / "pg", bin_dir=args.pg_bin or embedded_bin_dir())
        server.start()
        try:
            print(
                f"{server.version()}, scale {args.scale} ({args.scale * 100_000:,} accounts),"
                f" {args.clients} clients"
            )
            init(server, "b_full", args.scale)
            rate = max(1, round(full_speed(server, "b_full", args.scale, args.clients) / 2))
            dsn = init(server, "b_index", args.scale)
            order, work = builds(dsn, args.rounds, args.alone)
            bench, windows = under_pgbench(server, "b_index", args.scale, args.clients, work, rate)
        finally:
            server.destroy()
    stats = bench.by_window(windows)
    print(f"pgbench at {rate} tx/s (half of full speed); failed transactions: {bench.failed}")
    print(
        f"  {'build':<12}{'seconds':>8}{'tx':>7}{'p50 ms':>8}{'p99 ms':>8}{'longest':>9}"
        "   vs before: p50   p99"
    )
    worst: dict[str, list[float]] = {name: [0.0, 0.0] for name in VARIANTS}
    for label in order:
        n, p50, p99 = stats[f"{label} build"]
        _, b50, b99 = stats[f"{label} before"]
        window = next(w for w in windows if w[0] == f"{label} build")
        longest = max((ms for at, ms in bench.finished if window[1] <= at < window[2]), default=0.0)
        name = label.split()[1]
        worst[name] = [max(worst[name][0], p50 / b50), max(worst[name][1], p99 / b99)]
        print(
            f"  {label:<12}{window[2] - window[1]:>8.2f}{n:>7,}{p50:>8.2f}{p99:>8.2f}{longest:>9.0f}"
            f"{p50 / b50:>16.2f}x{p99 / b99:>6.2f}x"
        )
    for name, (w50, w99) in worst.items():
        print(
            f"  worst {name} (max_parallel_maintenance_workers {VARIANTS[name]}):"
            f" p50 {w50:.2f}x, p99 {w99:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A backfill of a partitioned table against the same rows in a plain table, side by side in one run.

``change_key_type`` now widens a partitioned table's foreign key column (large event tables hold
user ids). Its backfill walks the table's key, ``(id, at)`` here, which on a partitioned table is a
merge of every partition's index in each batch. This measures what that costs, with no load:

  single-plain   one UPDATE of the plain table: the floor (and one long transaction)
  ours-plain     zdm-runbook's migrate phase (backfill and verification) on the plain table
  ours-parted    the same on the table partitioned by month, PARTITIONS partitions

Each variant runs on a fresh copy of the rows (the same ids, dates and values), after a VACUUM
ANALYZE and a CHECKPOINT; rounds repeat the three in turn, and the worst round is reported too.

    python bench/partitioned_backfill.py                       # 600,000 rows, 24 and 120 partitions
    python bench/partitioned_backfill.py --rows 1000000 --partitions 48 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase


def build(dsn: str, rows: int, partitions: int) -> None:
    """``events``: plain when ``partitions`` is 0, else partitioned by 30-day ranges."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS events")
        c.execute("DROP SCHEMA IF EXISTS zdm CASCADE")
        by = " PARTITION BY RANGE (at)" if partitions else ""
        c.execute(f"CREATE TABLE events (id bigint, at date NOT NULL, n int, PRIMARY KEY (id, at)){by}")
        for m in range(partitions):
            c.execute(
                f"CREATE TABLE events_{m} PARTITION OF events"
                f" FOR VALUES FROM (DATE '2024-01-01' + {m * 30}) TO (DATE '2024-01-01' + {(m + 1) * 30})"
            )
        days = max(partitions, 24) * 30
        c.execute(
            "INSERT INTO events SELECT g, DATE '2024-01-01' + (g %% %s), g FROM generate_series(1, %s) g",
            [days, rows],
        )
        c.execute("ALTER TABLE events ADD COLUMN m int")
        c.execute("VACUUM ANALYZE events")
        c.execute("CHECKPOINT")


def single(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as c:
        started = time.monotonic()
        c.execute("UPDATE events SET m = n + 1")
        return time.monotonic() - started


def ours(dsn: str) -> float:
    plan = build_plan(
        parse_change("change: bench\noperations:\n  - backfill: {table: events, set: {m: 'n + 1'}}\n")
    )
    started = time.monotonic()
    execute_phase(plan, Phase.MIGRATE, dsn, on_batch=lambda state: None)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=600_000, help="rows (600,000)")
    parser.add_argument(
        "--partitions", type=int, action="append", help="partitions (repeatable; default 24 and 120)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every variant (2)")
    parser.add_argument("--pg-bin", type=Path, help="PostgreSQL binaries (default: the embedded ones)")
    args = parser.parse_args(argv)
    counts: list[int] = args.partitions or [24, 120]
    server = LocalServer(
        Path(tempfile.mkdtemp(prefix="zdm-bench-")) / "pg", args.pg_bin or embedded_bin_dir()
    )
    dsn = server.start()
    try:
        with psycopg.connect(dsn) as c:
            version = c.execute("SHOW server_version").fetchone()
        print(f"a backfill of {args.rows:,} rows, PostgreSQL {version[0] if version else '?'}, no load")
        print(f"  {'round':<7}{'variant':<22}{'seconds':>9}{'rows/s':>11}{'vs ours-plain':>15}")
        worst: dict[str, float] = {}
        for round_ in range(1, args.rounds + 1):
            build(dsn, args.rows, 0)
            floor = single(dsn)
            build(dsn, args.rows, 0)
            plain = ours(dsn)
            timed = [("single-plain", floor), ("ours-plain", plain)]
            for n in counts:
                build(dsn, args.rows, n)
                timed.append((f"ours-parted ({n})", ours(dsn)))
            for name, seconds in timed:
                ratio = plain / seconds  # rows/s against ours-plain's
                worst[name] = min(worst.get(name, ratio), ratio)
                print(f"  {round_:<7}{name:<22}{seconds:>9.2f}{args.rows / seconds:>11,.0f}{ratio:>14.2f}x")
        print("  worst round, rows/s vs ours-plain: " + ", ".join(f"{k} {v:.2f}x" for k, v in worst.items()))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""WAL and dead tuples of a migrate phase with two backfills on one table, side by side in one run.

The change is the demo's: ``orders.customer_id`` (int) copied to ``customer_ref`` (bigint) by
``change_type``, and a new NOT NULL ``currency`` filled by ``add_not_null_column``. After its expand
phase (columns and dual-write trigger added, as a real run has them), each variant fills both:

  single     one UPDATE setting both columns: the floor (and one long transaction)
  two-pass   zdm-runbook's engine, one backfill after the other (how it ran before one pass)
  one-pass   zdm-runbook's engine, both backfills in one keyset walk (what ``zdm run migrate`` does)

Each variant starts on a freshly built table, right after a CHECKPOINT (equal full-page-image
costs), with autovacuum off for the table so its dead tuples stay countable. WAL is
``pg_current_wal_insert_lsn()`` after minus before; row versions are ``n_tup_upd`` and dead tuples
``n_dead_tup`` of the table, read once every session has flushed its counts.

    python bench/one_pass.py                 # 300,000 rows, throw-away embedded PostgreSQL
    python bench/one_pass.py --rows 1000000 --pg-bin /usr/lib/postgresql/15/bin
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.execute.backfill import BackfillEngine, BackfillSettings
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.planner import Plan, build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

SPEC = """\
change: one-pass-bench
operations:
  - change_type: {table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int", not_null: true}
  - add_not_null_column: {table: orders, column: currency, type: text, default: "'EUR'", backfill: "'EUR'"}
"""


def build(dsn: str, rows: int, plan: Plan) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS orders")
        c.execute("DROP SCHEMA IF EXISTS zdm CASCADE")
        c.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, total numeric(10, 2)"
            " NOT NULL, created_at timestamptz NOT NULL DEFAULT now()) WITH (autovacuum_enabled = false)"
        )
        c.execute(
            "INSERT INTO orders (id, customer_id, total) SELECT g, 1 + g %% 20000, g %% 500 + 0.99"
            " FROM generate_series(1, %s) g",
            [rows],
        )
        c.execute("VACUUM ANALYZE orders")
    execute_phase(plan, Phase.EXPAND, dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("VACUUM ANALYZE orders")
        c.execute("CHECKPOINT")


def single(dsn: str, plan: Plan) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE orders SET customer_ref = customer_id::bigint, currency = 'EUR'")


def engine(dsn: str, plan: Plan, one_pass: bool) -> None:
    steps = plan.for_phase(Phase.MIGRATE)
    for group in [steps] if one_pass else [[st] for st in steps]:
        run = BackfillEngine(dsn, plan.change.id, group, BackfillSettings())
        try:
            run.run()
        finally:
            run.close()


VARIANTS: dict[str, Callable[[str, Plan], None]] = {
    "single": single,
    "two-pass": lambda dsn, plan: engine(dsn, plan, one_pass=False),
    "one-pass": lambda dsn, plan: engine(dsn, plan, one_pass=True),
}


def counters(dsn: str) -> tuple[int, int]:
    """``(n_tup_upd, n_dead_tup)`` of orders once two readings half a second apart agree."""
    last: tuple[int, int] | None = None
    with psycopg.connect(dsn, autocommit=True) as c:
        for _ in range(60):
            row = c.execute(
                "SELECT pg_stat_clear_snapshot(), n_tup_upd, n_dead_tup FROM pg_stat_user_tables"
                " WHERE relname = 'orders'"
            ).fetchone()
            now = (int(row[1]), int(row[2])) if row else (0, 0)
            if now == last:
                return now
            last = now
            time.sleep(0.5)
    raise RuntimeError("the table's counters did not settle")


def lsn(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def measure(dsn: str, rows: int, name: str) -> dict[str, Any]:
    plan = build_plan(parse_change(SPEC))
    build(dsn, rows, plan)
    upd0, _ = counters(dsn)
    before = lsn(dsn)  # no session of ours stays open during the run: the engine would see an app
    started = time.monotonic()
    VARIANTS[name](dsn, plan)
    seconds = time.monotonic() - started
    with psycopg.connect(dsn, autocommit=True) as c:
        wal_row = c.execute("SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", [before]).fetchone()
    upd, dead = counters(dsn)
    return {
        "variant": name,
        "wal_mb": float(wal_row[0]) / 1e6 if wal_row else 0.0,
        "versions": upd - upd0,
        "dead": dead,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=300_000, help="rows in orders (300,000)")
    parser.add_argument("--pg-bin", type=Path, help="PostgreSQL binaries (default: the embedded ones)")
    args = parser.parse_args(argv)
    server = LocalServer(
        Path(tempfile.mkdtemp(prefix="zdm-bench-")) / "pg", args.pg_bin or embedded_bin_dir()
    )
    dsn = server.start()
    try:
        with psycopg.connect(dsn) as c:
            version = c.execute("SHOW server_version").fetchone()
        print(
            f"two backfills on one table of {args.rows:,} rows, PostgreSQL {version[0] if version else '?'}"
        )
        results = [measure(dsn, args.rows, name) for name in VARIANTS]
        floor = results[0]["wal_mb"]
        head = f"  {'variant':<10}{'WAL MB':>9}{'vs single':>11}{'row versions':>14}{'per row':>9}"
        print(f"{head}{'dead':>10}{'seconds':>9}")
        for r in results:
            print(
                f"  {r['variant']:<10}{r['wal_mb']:>9.1f}{r['wal_mb'] / floor:>10.2f}x{r['versions']:>14,}"
                f"{r['versions'] / args.rows:>9.2f}{r['dead']:>10,}{r['seconds']:>9.1f}"
            )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the dual-write trigger costs the app's writes and the backfill, side by side in one run.

The change is the demo's ``change_type`` (``orders.customer_id`` int copied to ``customer_ref``
bigint). After its expand phase, each variant has a different trigger on ``orders``:

  none       no trigger (``dual_write: app``): the floor
  every-row  the sync function as one ``BEFORE INSERT OR UPDATE`` trigger with no condition,
             called on every row written (this project's form before, and GitLab's rename triggers')
  ours       what expand installs: the UPDATE trigger's ``WHEN`` lets through, without a call,
             every update the function would leave as it is

Measured per variant, on a freshly built table each time:

  app        an app's update of another column (``total``) on every row, in statements of 20,000
             rows: its backend's CPU time per row (read from /proc: the server runs on this
             machine) and the statements' time per row; what the trigger adds to each app write,
             for as long as the change lasts
  backfill   the migrate phase, zdm-runbook's engine on the otherwise idle server: rows/s

Rounds rotate the order of the variants; every round is printed, with each variant against
``none`` in the same round, and the worst round last.

    python bench/dual_write.py                       # 300,000 rows, 3 rounds, embedded PostgreSQL
    python bench/dual_write.py --pg-bin /usr/lib/postgresql/15/bin
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from backfill import at_least  # a sibling bench script: bench/ is the script's sys.path[0]
from psycopg import sql

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.dual_write import insert_trigger
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

SPEC = """\
change: dual-write-bench
dual_write: {mode}
operations:
  - change_type: {{table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int", not_null: true}}
"""
VARIANTS = ("none", "every-row", "ours")
CHUNK = 20_000


def build(dsn: str, rows: int, variant: str) -> None:
    """The table, expanded as the variant has it, vacuumed and checkpointed."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS orders")
        c.execute("DROP SCHEMA IF EXISTS zdm CASCADE")
        c.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, total numeric(10, 2)"
            " NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
        c.execute(
            "INSERT INTO orders (id, customer_id, total) SELECT g, 1 + g %% 20000, g %% 500 + 0.99"
            " FROM generate_series(1, %s) g",
            [rows],
        )
    plan = build_plan(parse_change(SPEC.format(mode="app" if variant == "none" else "trigger")))
    execute_phase(plan, Phase.EXPAND, dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        if variant == "every-row":
            (name,) = c.execute(  # the UPDATE trigger; the recipe names its function the same
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND tgtype & 16 <> 0"
            ).fetchone() or ("",)
            c.execute(sql.SQL("DROP TRIGGER {} ON orders").format(sql.Identifier(insert_trigger(name))))
            c.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE ON orders FOR EACH ROW"
                    " EXECUTE FUNCTION {}()"
                ).format(sql.Identifier(name), sql.Identifier(name))
            )
        triggers = c.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass").fetchone()
        assert triggers == ({"none": 0, "every-row": 1, "ours": 2}[variant],), (variant, triggers)
        c.execute("VACUUM ANALYZE orders")
        c.execute("CHECKPOINT")


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time (the server runs on this machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def app_cost(dsn: str, rows: int) -> tuple[float, float]:
    """An app's update of another column: its backend's CPU and the statements' time, microseconds per row."""
    with psycopg.connect(dsn, autocommit=True) as c:
        (pid,) = c.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        cpu, started = cpu_seconds(pid), time.perf_counter()
        for low in range(0, rows, CHUNK):
            c.execute("UPDATE orders SET total = total + 1 WHERE id > %s AND id <= %s", [low, low + CHUNK])
        cpu, wall = cpu_seconds(pid) - cpu, time.perf_counter() - started
        c.execute("VACUUM orders")
        c.execute("CHECKPOINT")
    return cpu * 1e6 / rows, wall * 1e6 / rows


def backfill_rate(dsn: str, rows: int, variant: str) -> float:
    """The engine's own rows/s over its pass (the verification after it reads, and is not counted)."""
    plan = build_plan(parse_change(SPEC.format(mode="app" if variant == "none" else "trigger")))
    states: list[Any] = []
    with contextlib.redirect_stdout(io.StringIO()):  # the engine's summary lines
        execute_phase(plan, Phase.MIGRATE, dsn, on_batch=states.append, on_event=lambda _: None)
    with psycopg.connect(dsn) as c:
        left = c.execute(
            "SELECT count(*) FROM orders WHERE customer_ref IS DISTINCT FROM customer_id"
        ).fetchone()
    assert left == (0,), f"{variant}: {left} rows not filled"
    return float(states[-1].rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=at_least(1), default=300_000, help="rows in orders (300,000)")
    parser.add_argument(
        "--repeat", type=at_least(1), default=3, help="rounds, the order rotated each time (3)"
    )
    parser.add_argument("--pg-bin", type=Path, help="PostgreSQL binaries (default: the embedded ones)")
    args = parser.parse_args(argv)
    server = LocalServer(
        Path(tempfile.mkdtemp(prefix="zdm-bench-")) / "pg", args.pg_bin or embedded_bin_dir()
    )
    dsn = server.start()
    try:
        with psycopg.connect(dsn) as c:
            version = c.execute("SHOW server_version").fetchone()
        print(f"dual-write trigger on {args.rows:,} rows, PostgreSQL {version[0] if version else '?'}")
        head = f"  {'round':<7}{'variant':<11}{'app CPU us/row':>15}{'vs none':>9}{'app us/row':>12}"
        print(f"{head}{'vs none':>9}{'backfill rows/s':>17}{'vs none':>9}")
        worst: dict[str, list[float]] = {v: [0.0, 0.0, float("inf")] for v in VARIANTS}
        for r in range(args.repeat):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            got: dict[str, tuple[float, float, float]] = {}
            for variant in order:
                build(dsn, args.rows, variant)
                got[variant] = (*app_cost(dsn, args.rows), backfill_rate(dsn, args.rows, variant))
            for variant in VARIANTS:
                ratios = [x / n for x, n in zip(got[variant], got["none"], strict=True)]
                worst[variant] = [
                    max(worst[variant][0], ratios[0]),
                    max(worst[variant][1], ratios[1]),
                    min(worst[variant][2], ratios[2]),
                ]
                cpu, wall, rate = got[variant]
                print(
                    f"  {r + 1:<7}{variant:<11}{cpu:>15.2f}{ratios[0]:>8.2f}x{wall:>12.2f}{ratios[1]:>8.2f}x"
                    f"{rate:>17,.0f}{ratios[2]:>8.2f}x"
                )
        print("  worst round against none:")
        for v in VARIANTS[1:]:
            print(
                f"    {v}: app CPU {worst[v][0]:.2f}x, app time {worst[v][1]:.2f}x,"
                f" backfill rows/s {worst[v][2]:.2f}x"
            )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

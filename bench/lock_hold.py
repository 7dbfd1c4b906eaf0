"""How long a catalog-only step holds its lock, as the app sees it: pipelined (ours) or one
statement per round trip (the executor before, and a migration tool that runs a transaction's
statements one by one, as alembic and GitLab's ``with_lock_retries`` block do).

Each trial: a blocker session holds AccessShareLock on the table; the step is started and queues
behind it for AccessExclusiveLock; an app query (a point SELECT) queues behind the step. Then the
blocker commits. The step takes the lock, runs, commits, and only then does the app's query run:
the time from the blocker's COMMIT to the app's answer is how long the step held every query on
the table. Both ways run the same step, built by the planner, on identical tables, alternating.

The steps:

  add-column  expand's ``ALTER TABLE ... ADD COLUMN`` of a rename (one statement)
  drop-old    contract's step of a rename: DROP TRIGGER, DROP FUNCTION, DROP COLUMN (three)

On the local socket a round trip costs tens of microseconds; from a runbook host elsewhere it
costs the network's round trip, which the one-by-one way adds to the hold once per statement
after the first and once for the COMMIT (the pipelined way adds none: its messages have all left
before the server's first reply, which ``tests/test_ddl.py`` checks in libpq's own trace). This
machine's kernel has no ``netem`` to add a real delay, so that case is not measured here. What can
be measured here is a busy server: with ``--load-rate``, pgbench's TPC-B runs on another database
of the same server at a fixed rate (4 clients) while the trials run, and every round trip waits
for a core.

    python bench/lock_hold.py                       # 15 trials per step and way
    python bench/lock_hold.py --load-rate 1500      # while pgbench's TPC-B runs beside, 1,500 tx/s
    python bench/lock_hold.py --pg-bin /usr/lib/postgresql/15/bin
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from pgbench_migration import init  # a sibling bench script: bench/ is the script's sys.path[0]
from psycopg import sql

from zdm_runbook import ledger
from zdm_runbook.core.connect import set_timeouts
from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.demo.pgbench import PgBench
from zdm_runbook.execute.executor import Executor
from zdm_runbook.execute.guard import GuardSettings
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.planner import Plan, build_plan
from zdm_runbook.plan.steps import Step
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

Conn = psycopg.Connection[Any]
# The step, its phase, and the phases run before it to set it up (not measured).
STEPS: dict[str, tuple[Phase, tuple[Phase, ...]]] = {
    "add-column": (Phase.EXPAND, ()),
    "drop-old": (Phase.CONTRACT, (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH)),
}
WAYS = ("ours", "one-by-one")
# No ladder: the first attempt must still be waiting when the blocker commits.
GUARD = GuardSettings(lock_timeout=10.0, lock_timeout_first=0.0)


def _plan(table: str) -> Plan:
    change = table.replace("_", "-")
    rename = f"rename_column: {{table: {table}, from: note, to: remark, type: text}}"
    return build_plan(parse_change(f"change: {change}\noperations:\n  - {rename}\n"))


def _prepare(dsn: str, table: str, rows: int, before: tuple[Phase, ...]) -> Plan:
    """A fresh table, and the phases before the measured step."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(sql.Identifier(table)))
        c.execute(
            sql.SQL("INSERT INTO {} SELECT g, 'n' || g FROM generate_series(1, %s) g").format(
                sql.Identifier(table)
            ),
            [rows],
        )
    plan = _plan(table)
    with contextlib.redirect_stdout(io.StringIO()):  # their progress lines
        for phase in before:
            execute_phase(plan, phase, dsn, settings=GUARD, on_batch=lambda state: None)
    return plan


def _waiting(monitor: Conn, table: str) -> int:
    row = monitor.execute(
        "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted", [table]
    ).fetchone()
    return int(row[0]) if row else 0


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def ours(dsn: str, plan: Plan, step: Step) -> Callable[[], None]:
    """The step as a phase runs it: the executor on its worker, watched from its control session."""
    worker, control = psycopg.connect(dsn, autocommit=True), psycopg.connect(dsn, autocommit=True)
    ledger.ensure(control)
    ledger.record_change(control, plan.change.id, "", "bench")
    executor = Executor(worker, control, plan, settings=GUARD)

    def run() -> None:
        try:
            executor.run_step(step)
        finally:
            worker.close()
            control.close()

    return run


def one_by_one(dsn: str, plan: Plan, step: Step) -> Callable[[], None]:
    """The same statements in one transaction, each sent when the one before has answered."""
    conn = psycopg.connect(dsn, autocommit=True)

    def run() -> None:
        with conn, conn.transaction():
            set_timeouts(conn, GUARD.lock_timeout, GUARD.statement_timeout, local=True)
            for statement in step.statements:
                conn.execute(statement)

    return run


def trial(dsn: str, name: str, way: str, number: int, rows: int) -> float:
    """Seconds the app's query waited after the blocker let go: the step's hold on the table."""
    phase, before = STEPS[name]
    table = f"hold_{name.replace('-', '_')}_{way.replace('-', '_')}_{number}"
    plan = _prepare(dsn, table, rows, before)
    step = next(st for st in plan.for_phase(phase) if st.key.endswith(name))
    run = (ours if way == "ours" else one_by_one)(dsn, plan, step)
    with psycopg.connect(dsn, autocommit=True) as monitor, psycopg.connect(dsn) as blocker:
        blocker.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        worker = threading.Thread(target=run)
        worker.start()
        _until(lambda: _waiting(monitor, table) == 1, "the step to queue")
        answered: list[float] = []

        def app() -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(sql.SQL("SELECT id FROM {} WHERE id = 1").format(sql.Identifier(table)))
                answered.append(time.monotonic())

        query = threading.Thread(target=app)
        query.start()
        _until(lambda: _waiting(monitor, table) == 2, "the app's query to queue")
        released = time.monotonic()
        blocker.commit()
        query.join()
        worker.join()
    return answered[0] - released


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=15, help="trials per step and way (15)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows in each table (10000)")
    parser.add_argument(
        "--load-rate",
        type=int,
        default=0,
        help="pgbench's TPC-B at this many tx/s on another database while the trials run (0: none)",
    )
    parser.add_argument(
        "--pg-bin", type=Path, help="bin folder of another PostgreSQL for the throw-away server"
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or args.rows < 1 or args.load_rate < 0:
        parser.error("--trials and --rows must be at least 1, --load-rate not negative")
    server = LocalServer(
        Path(tempfile.mkdtemp(prefix="zdm-bench-")) / "pg", args.pg_bin or embedded_bin_dir()
    )
    dsn = server.start()
    load = None
    try:
        with psycopg.connect(dsn) as c:
            version = c.execute("SHOW server_version").fetchone()
        beside = "no other load"
        if args.load_rate:
            init(server, "load", 4)
            load = PgBench(server, "load", 400_000, lambda: "load", 4, args.load_rate, builtin="tpcb-like")
            load.start()
            time.sleep(3)  # warm-up
            beside = f"pgbench's TPC-B at {args.load_rate:,} tx/s beside"
        print(f"lock hold of a step, PostgreSQL {version[0] if version else '?'}, local socket, {beside}")
        print(f"  {'step':<12}{'way':<12}{'trials':>7}{'median ms':>11}{'max ms':>9}")
        for name in STEPS:
            held: dict[str, list[float]] = {way: [] for way in WAYS}
            for number in range(args.trials):
                for way in WAYS if number % 2 == 0 else WAYS[::-1]:
                    held[way].append(trial(dsn, name, way, number, args.rows) * 1000)
            for way in WAYS:
                ms = held[way]
                print(f"  {name:<12}{way:<12}{len(ms):>7}{statistics.median(ms):>11.2f}{max(ms):>9.2f}")
            ratio = statistics.median(held["one-by-one"]) / statistics.median(held["ours"])
            print(f"  {name:<12}one-by-one / ours, median: {ratio:.1f}x")
    finally:
        if load is not None:
            load.stop()
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())

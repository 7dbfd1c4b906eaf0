"""Contended DDL, side by side: how long does the app wait while a migration meets a held lock?

One run, three scenarios on identical tables, each while a "blocker" session holds
AccessShareLock on the table for --hold seconds (an idle-in-transaction report, say):

  floor   no DDL at all: the app's latency with the blocker alone (it does not block readers)
  naive   ALTER TABLE ... ADD COLUMN with no lock_timeout: queues behind the blocker, and every
          app query queues behind it, until the blocker commits
  guarded the same change as a zdm-runbook step: lock_timeout (default 1 s), retries with backoff

The app issues a point SELECT every --interval seconds on a fixed schedule (open loop): a query's
latency counts from when it was due, so a stall shows up in every query it delayed, as users see it.

    python bench/contended_ddl.py                      # embedded PostgreSQL, 20 s hold
    python bench/contended_ddl.py --hold 5 --dsn-env ZDM_DSN
    python bench/contended_ddl.py --pg-bin /usr/lib/postgresql/15/bin
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.core.connect import describe, resolve_dsn
from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.execute.guard import GuardSettings
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change


class OpenLoopApp(threading.Thread):
    """Point queries due every ``interval`` s; latency = completion time - due time."""

    def __init__(self, dsn: str, table: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table, self.interval = dsn, table, interval
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        query = sql.SQL("SELECT id FROM {} WHERE id = %s").format(sql.Identifier(self.table))
        with psycopg.connect(self.dsn, autocommit=True, application_name="bench-app") as conn:
            due, n = time.monotonic(), 0
            while not self.stop.is_set():
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                conn.execute(query, [n % 1000 + 1])
                self.latencies.append(time.monotonic() - due)
                due += self.interval
                n += 1


def _table(dsn: str, name: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v int)").format(sql.Identifier(name)))
        c.execute(
            sql.SQL("INSERT INTO {} SELECT g, g FROM generate_series(1, %s) g").format(sql.Identifier(name)),
            [rows],
        )


def scenario(dsn: str, kind: str, hold: float, rows: int, interval: float) -> dict[str, Any]:
    """Run one scenario; return the app's latency figures and what the DDL did."""
    table = f"bench_orders_{kind}"
    _table(dsn, table, rows)
    app = OpenLoopApp(dsn, table, interval)
    app.start()
    time.sleep(1.0)  # warm up
    blocker = psycopg.connect(dsn, application_name="bench-blocker")
    blocker.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    release = threading.Timer(hold, blocker.commit)
    release.start()
    started = time.monotonic()
    ddl: dict[str, Any] = {"kind": kind}
    time.sleep(0.5)
    if kind == "naive":
        with psycopg.connect(dsn, autocommit=True, application_name="bench-naive") as c:
            c.execute(sql.SQL("ALTER TABLE {} ADD COLUMN note text").format(sql.Identifier(table)))
        ddl["outcome"] = "applied"
    elif kind == "guarded":
        plan = build_plan(
            parse_change(
                f"change: bench-{kind}\n"
                f"operations:\n  - add_column: {{table: {table}, column: note, type: text}}\n"
            )
        )
        try:
            results = execute_phase(plan, "expand", dsn)
            ddl["outcome"] = results[0].outcome
            ddl["attempts"] = len(results[0].attempts)
        except psycopg.Error as exc:  # pragma: no cover - reported, not hidden
            ddl["outcome"] = f"failed: {exc}"
        except Exception as exc:  # a StepFailed when attempts ran out is a result too
            ddl["outcome"] = "gave up"
            ddl["attempts"] = len(getattr(exc, "attempts", []))
    ddl["ddl_done_after_s"] = round(time.monotonic() - started, 2)
    release.join()
    time.sleep(max(0.0, hold + 1.5 - (time.monotonic() - started)))
    app.stop.set()
    app.join()
    blocker.close()
    lat = sorted(app.latencies)
    return {
        **ddl,
        "queries": len(lat),
        "p50_ms": round(statistics.median(lat) * 1000, 1),
        "p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 1),
        "max_ms": round(lat[-1] * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the blocker holds its lock (20)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows in each table (100000)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between app queries (0.02)")
    parser.add_argument(
        "--dsn-env", metavar="VAR", help="use this server instead of a throw-away embedded one"
    )
    parser.add_argument(
        "--pg-bin", type=Path, help="bin folder of another PostgreSQL for the throw-away server"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    server = None
    if args.dsn_env:
        dsn = resolve_dsn(env=args.dsn_env)
    else:
        bin_dir = args.pg_bin or embedded_bin_dir()
        server = LocalServer(Path(tempfile.mkdtemp(prefix="zdm-bench-")) / "pg", bin_dir)
        dsn = server.start()
    try:
        with psycopg.connect(dsn) as c:
            row = c.execute("SHOW server_version").fetchone()
        version = row[0] if row else "?"
        results = [
            scenario(dsn, kind, args.hold, args.rows, args.interval) for kind in ("floor", "naive", "guarded")
        ]
    finally:
        if server is not None:
            server.destroy()
    by = {r["kind"]: r for r in results}
    ratios = {
        "max_naive_over_guarded": round(by["naive"]["max_ms"] / by["guarded"]["max_ms"], 1),
        "p99_naive_over_guarded": round(by["naive"]["p99_ms"] / by["guarded"]["p99_ms"], 1),
        "max_guarded_over_lock_timeout": round(
            by["guarded"]["max_ms"] / (GuardSettings().lock_timeout * 1000), 2
        ),
    }
    if args.json:
        print(
            json.dumps(
                {"server": version, "hold_s": args.hold, "results": results, "ratios": ratios}, indent=2
            )
        )
        return 0
    print(f"contended DDL on PostgreSQL {version} ({describe(dsn)})")
    print(
        f"blocker holds AccessShareLock for {args.hold:g} s; app point query due every"
        f" {args.interval * 1000:g} ms (open loop); guarded lock_timeout {GuardSettings().lock_timeout:g} s"
    )
    print(f"{'scenario':<10}{'queries':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}  DDL")
    for r in results:
        what = "-" if r["kind"] == "floor" else f"{r['outcome']} after {r['ddl_done_after_s']} s"
        if "attempts" in r:
            what += f", {r['attempts']} attempts"
        print(f"{r['kind']:<10}{r['queries']:>9}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['max_ms']:>10}  {what}")
    print(
        f"naive / guarded: longest app wait {ratios['max_naive_over_guarded']}x,"
        f" p99 {ratios['p99_naive_over_guarded']}x;"
        f" guarded longest wait = {ratios['max_guarded_over_lock_timeout']} x lock_timeout"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

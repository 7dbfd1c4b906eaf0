"""``zdm demo``: a whole change, all four phases through ``zdm run``, under live traffic.

On a throw-away embedded PostgreSQL: a shop schema (customers, orders) and one of the changes of
:mod:`.scenarios` (a column's type, or a referenced primary key's), with both app versions'
statements as compat sets. While the phases run, an old-app and (after expand) a new-app
generator insert, update and select continuously and ``pgbench`` adds read load; the old app
stops before contract, as after a completed rollout. The summary shows each phase's duration
and lock waits, the rows backfilled, each app's requests, errors and latency per phase, pgbench's
failures, whether every acknowledged write is present, and the archive.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.demo.pgbench import PgBench
from zdm_runbook.demo.scenarios import TYPE, Scenario
from zdm_runbook.demo.traffic import App, summary
from zdm_runbook.ledger import status
from zdm_runbook.notebook.runner import RunResult, run
from zdm_runbook.spec.model import Phase

SIGN = {"signoff_by": "zdm demo", "signoff_ticket": "DEMO-1"}
EXTRA = {
    Phase.CONTRACT: {
        "deploy_cycle_override": "demo: the old app stopped before contract (the rollout is complete)",
        "usage_window": "3s",
    }
}


@dataclass
class Demo:
    """One demo run: its server, database, traffic, and what each phase returned."""

    rows: int
    archive: Path
    keep: bool = False
    scenario: Scenario = TYPE
    echo: Callable[[str], None] = print
    phase: str = "setup"
    results: list[tuple[RunResult, float]] = field(default_factory=list)
    apps: list[App] = field(default_factory=list)

    def run(self) -> int:
        """Everything, start to end; the exit status is 0 only with 0 errors and 0 lost writes."""
        root = Path(tempfile.mkdtemp(prefix="zdm-demo-"))
        server = LocalServer(data_dir=root / "pg", bin_dir=embedded_bin_dir())
        try:
            return self._run(server, root)
        finally:
            if self.keep:
                self.echo(
                    f"\nThe demo database keeps running:\n  export ZDM_DSN='{self.dsn}'\n"
                    f"  zdm status; zdm locks orders; jupyter lab {self.archive.resolve()}\n"
                    f"  stop it: zdm db stop --data-dir {server.data_dir}"
                )
            else:
                server.destroy()
                shutil.rmtree(root, ignore_errors=True)

    def _run(self, server: LocalServer, root: Path) -> int:
        started = time.monotonic()
        self.echo(f"starting PostgreSQL ({server.version()}) in {server.data_dir}")
        admin = server.start()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE zdm_demo")
        self.dsn = make_conninfo(admin, dbname="zdm_demo")
        os.environ["ZDM_DSN"] = self.dsn  # the runner and its kernel read the DSN from here
        self.echo(f"creating customers and {self.rows:,} orders")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL(self.scenario.schema).format(
                    customers=sql.Literal(20_000), rows=sql.Literal(self.rows)
                )
            )
            conn.execute("VACUUM ANALYZE customers, orders")  # not in the block above: VACUUM needs its own
        change = self.scenario.change_id
        spec = root / f"{change}.yaml"
        spec.write_text(self.scenario.spec)
        (self.archive / change).mkdir(parents=True, exist_ok=True)
        shutil.copy(spec, self.archive / change / "spec.yaml")
        old = App("old-app", self.dsn, self.scenario.old, lambda: self.phase, max_id=self.rows).start()
        self.apps = [old]
        bench = PgBench(server, "zdm_demo", self.rows, lambda: self.phase).start()
        try:
            for phase in Phase:
                if phase == Phase.CONTRACT:
                    old.stop()  # the rollout is complete: no old-app instance runs any more
                    self.echo("old app stopped: the new version runs everywhere")
                if not self._phase(phase, spec):
                    break
                if phase == Phase.EXPAND:
                    self.apps.append(
                        App(
                            "new-app", self.dsn, self.scenario.new, lambda: self.phase, max_id=self.rows
                        ).start()
                    )
                    self.echo(f"new app started: {self.scenario.new_app_note}")
            self.phase = "done"
            time.sleep(0.5)
        finally:
            for app in self.apps:
                app.stop()
            bench.stop()
        return self._report(bench, time.monotonic() - started)

    def _phase(self, phase: Phase, spec: Path) -> bool:
        self.phase = phase.value
        self.echo(f"\n== {phase.value}: zdm run {phase.value} (papermill), traffic continues")
        began = time.monotonic()
        with _prefixed(self.echo) as stream:
            result = run(phase, spec, {**SIGN, **EXTRA.get(phase, {})}, self.archive, stream=stream)
        took = time.monotonic() - began
        self.results.append((result, took))
        self.echo(f"== {phase.value}: {result.outcome} in {took:.1f} s")
        if result.exit_code:
            self.echo(str(result))
        return result.exit_code == 0

    def _afterwards(self, conn: psycopg.Connection[Any]) -> str | None:
        """The scenario's own proof, once every phase has run (its failure fails the demo)."""
        if self.scenario.afterwards is None or len(self.results) != len(Phase):
            return None
        try:
            return self.scenario.afterwards(conn)
        except (psycopg.Error, ValueError) as exc:
            return f"after the change: FAILED: {exc}"

    def _report(self, bench: PgBench, took: float) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            waits = status.lock_wait_by_phase(conn)
            filled = status.backfilled_tables(conn)
            lost = self.scenario.lost_writes(conn, self.apps)
            afterwards = self._afterwards(conn)
        phases = pd.DataFrame(
            [
                {
                    "phase": r.phase,
                    "outcome": r.outcome,
                    "seconds": round(t, 1),
                    "lock wait (s)": round(float(waits.get(r.phase) or 0), 3),
                    "notebook": r.notebook.name if r.notebook else "",
                }
                for r, t in self.results
            ]
        )
        traffic = summary(self.apps)
        errors = int(traffic["errors"].sum()) if len(traffic) else 0
        self.echo(f"\n== summary ({took:.0f} s)\n{phases.to_string(index=False)}")
        for table, rows, steps in filled:
            self.echo(
                f"\n{table} backfilled ({rows:,} rows" + (f", {steps} backfill steps)" if steps > 1 else ")")
            )
        self.echo(f"\napp traffic (per app version and phase):\n{traffic.to_string(index=False)}")
        self.echo(f"\npgbench (read load on orders): {bench.report()}")
        acknowledged = sum(len(a.acknowledged) for a in self.apps)
        self.echo(f"acknowledged writes: {acknowledged:,}, missing or changed at the end: {lost}")
        self.echo(f"app errors: {errors}; pgbench failed transactions: {bench.failed}")
        if afterwards:
            self.echo(afterwards)
        self.echo(f"archive: {(self.archive / self.scenario.change_id).resolve()}")
        ok = len(self.results) == len(Phase) and all(r.exit_code == 0 for r, _ in self.results)
        ok = ok and errors == 0 and lost == 0 and bench.failed == 0 and "FAILED" not in (afterwards or "")
        self.echo("demo: OK" if ok else "demo: FAILED")
        return 0 if ok else 1


class _Prefixed(io.TextIOBase):
    """A stream that hands the notebook's output to ``echo`` line by line, indented."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo, self.buffer_ = echo, ""

    def write(self, text: str) -> int:
        self.buffer_ += text
        *lines, self.buffer_ = self.buffer_.split("\n")
        for line in lines:
            if line.strip():
                self.echo(f"   | {line}")
        return len(text)


@contextlib.contextmanager
def _prefixed(echo: Callable[[str], None]) -> Iterator[Any]:
    stream = _Prefixed(echo)
    yield stream
    if stream.buffer_.strip():
        echo(f"   | {stream.buffer_}")

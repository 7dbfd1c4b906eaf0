"""A real streaming standby: the backfill holds while it lags, says so, and resumes by itself.

A throw-away primary (the embedded PostgreSQL) and a standby made from it with ``pg_basebackup -R
-X stream``, whose ``recovery_min_apply_delay`` of 2 s gives it a replay lag of about 2 s for
every change. The preflight reports the standby and its lag; a backfill allowed 1 s of lag holds,
shows why in its progress and in ``zdm.backfills.hold``, and carries on once the delay is lifted
and the standby has replayed everything.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from zdm_runbook import ledger
from zdm_runbook.demo import embedded
from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.execute.backfill import BackfillEngine, BackfillSettings
from zdm_runbook.inspect.preflight import preflight
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change

from .sessions import wait_for

SPEC = 'change: fill-w\noperations:\n  - backfill: {table: big, set: {w: "v * 2 + 1"}}\n'
LAG = "SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication"


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="zdm-replica-"))
    root.chmod(0o755)
    primary = LocalServer(root / "primary", embedded_bin_dir())
    standby = LocalServer(root / "standby", embedded_bin_dir())
    try:
        primary_dsn = primary.start()
        standby.data_dir.mkdir(mode=0o700)
        if embedded._is_root():  # the server user must own the copy, as initdb's folder
            user = embedded._ensure_server_user()
            os.chown(standby.data_dir, user.pw_uid, user.pw_gid)
        copy = [
            str(primary.bin_dir / "pg_basebackup"),
            "-h",
            str(primary.socket_dir),
            "-p",
            str(primary.port),
        ]
        done = primary._run_raw([*copy, "-U", "postgres", "-D", str(standby.data_dir), "-R", "-X", "stream"])
        assert done.returncode == 0, done.stderr
        with (standby.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write("recovery_min_apply_delay = '2s'\n")
        standby_dsn = standby.start()
        yield primary_dsn, standby_dsn
    finally:
        standby.destroy()
        primary.destroy()


def test_the_backfill_holds_while_a_real_standby_lags_and_resumes_when_it_catches_up(
    primary_and_standby: tuple[str, str],
) -> None:
    primary, standby = primary_and_standby
    with psycopg.connect(primary, autocommit=True) as c:
        c.execute("CREATE TABLE big (id bigint PRIMARY KEY, v int, w bigint)")
        c.execute("INSERT INTO big SELECT g, g % 1000, NULL FROM generate_series(1, 100000) g")
        ledger.ensure(c)
        ledger.record_change(c, "fill-w", "", "x")
        streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        assert wait_for(lambda: c.execute(streaming).fetchone() == (1,), 30)

        # An app committing every 50 ms: each commit reaches the standby's data 2 s later.
        stop = threading.Event()

        def app() -> None:
            with psycopg.connect(primary, autocommit=True) as a:
                a.execute("CREATE TABLE app (at timestamptz)")
                while not stop.wait(0.05):
                    a.execute("INSERT INTO app VALUES (now())")

        writer = threading.Thread(target=app)
        writer.start()
        try:
            assert wait_for(lambda: float((c.execute(LAG).fetchone() or [None])[0] or 0) > 1.5, 10)
            verdict = preflight(c, ["public.big"], max_replay_lag_s=1.0)  # the standby, and its lag
        finally:
            stop.set()
            writer.join()
        replicas = verdict.frames["replication"]
        assert list(replicas["application_name"]) == ["walreceiver"] and replicas["replay_lag_s"][0] > 1.0
        assert not verdict.go and "replica walreceiver replays" in str(verdict)

        caught_up = "SELECT bool_and(replay_lsn >= pg_current_wal_lsn()) FROM pg_stat_replication"
        assert wait_for(lambda: c.execute(caught_up).fetchone() == (True,), 10)

        plan = build_plan(parse_change(SPEC))
        settings = BackfillSettings(
            start_batch_size=500, max_batch_size=500, pause=0.02, max_replay_lag=1.0, busy_duty=1.0
        )
        engine = BackfillEngine(primary, plan.change.id, plan.steps[0], settings)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                engine.run()
            except BaseException as exc:  # reported by the assertion below
                failed.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        try:
            hold = "SELECT hold FROM zdm.backfills"
            assert wait_for(lambda: str(c.execute(hold).fetchone()).startswith("('replica lag"), 30, 0.1)
            assert engine.state.paused is not None and engine.state.paused.startswith("replica lag")
            held_at = engine.state.rows_scanned
            assert 0 < held_at < 100000
            with psycopg.connect(standby, autocommit=True) as s:  # the standby catches up
                s.execute("ALTER SYSTEM SET recovery_min_apply_delay = 0")
                s.execute("SELECT pg_reload_conf()")
            worker.join(120)
        finally:
            engine.close()
        assert not worker.is_alive() and not failed, failed
        assert c.execute("SELECT status, hold, rows_updated FROM zdm.backfills").fetchone() == (
            "done",
            None,
            100000,
        )
        throttled = c.execute("SELECT max(throttled_s) FROM zdm.backfill_batches").fetchone()
        assert throttled and throttled[0] >= 0.5  # the batch after the hold records the time held

"""The backfill's batch statements: composed once, prepared on the server, right for any key."""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from zdm_runbook import ledger
from zdm_runbook.execute.backfill import BackfillEngine, BackfillSettings
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

pytestmark = pytest.mark.pg

# A composite key of text and uuid, and an expression with a '%' (modulo): the statements run
# through a RawCursor, whose $n placeholders must leave the '%' as written.
SPEC = """
change: fill-code
operations:
  - backfill: {table: accounts, set: {code: "(n % 7)::text || '-' || region"}}
"""
ROWS = 3000


def test_a_backfill_prepares_its_batch_statements_once_and_walks_a_composite_key(any_pg_db: str) -> None:
    with psycopg.connect(any_pg_db, autocommit=True) as c:
        c.execute(
            "CREATE TABLE accounts (region text, id uuid DEFAULT gen_random_uuid(), n int NOT NULL,"
            " code text, PRIMARY KEY (region, id))"
        )
        c.execute(
            "INSERT INTO accounts (region, n) SELECT (ARRAY['eu', 'us', 'ap'])[1 + g %% 3], g"
            " FROM generate_series(1, %s) g",
            [ROWS],
        )
        c.execute("ANALYZE accounts")
        ledger.ensure(c)
        ledger.record_change(c, "fill-code", "", "x")
    plan = build_plan(parse_change(SPEC))
    step = plan.for_phase(Phase.MIGRATE)[0]
    settings = BackfillSettings(start_batch_size=100, min_batch_size=100, max_batch_size=100)
    engine = BackfillEngine(any_pg_db, "fill-code", step, settings)
    try:
        state = engine.run()
        assert engine.conn is not None
        prepared = engine.conn.execute(
            "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE 'UPDATE%%'"
        ).fetchall()
    finally:
        engine.close()

    assert state.rows_updated == ROWS and len(state.batches) == ROWS // 100
    # One UPDATE, prepared once and run for every batch after psycopg's threshold of five; the
    # first batch (no lower bound) is a statement of its own shape, never prepared.
    assert len(prepared) == 1, prepared
    statement, runs = prepared[0]
    assert "$1" in statement and "%" in statement
    assert runs >= len(state.batches) - 6
    with psycopg.connect(any_pg_db, autocommit=True) as c:
        wrong = c.execute(
            "SELECT count(*) FROM accounts WHERE code IS DISTINCT FROM (n % 7)::text || '-' || region"
        ).fetchone()
        keys = c.execute(
            "SELECT lower_key, upper_key, rows_scanned FROM zdm.backfill_batches ORDER BY batch"
        ).fetchall()
    assert wrong == (0,)
    assert keys[0][0] is None and sum(row[2] for row in keys) == ROWS
    for before, after in itertools.pairwise(keys):  # each batch starts where the last ended
        assert after[0] == before[1]


def test_a_connection_terminated_at_any_moment_of_a_pipelined_batch_is_reestablished(db: str) -> None:
    # pg_terminate_backend 20 times in one run, each after a batch, at a random moment. Some land
    # inside the pipeline, where psycopg may not mark the connection broken ("cannot exit pipeline
    # mode while busy"): with only psycopg's flags to go by, 2 runs of this test in 10 failed.
    rows = 100_000
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE big (id bigint PRIMARY KEY, v int, w bigint)")
        c.execute("INSERT INTO big SELECT g, g %% 1000, NULL FROM generate_series(1, %s) g", [rows])
        c.execute("ANALYZE big")
        ledger.ensure(c)
        ledger.record_change(c, "fill-w", "", "x")
    spec = "change: fill-w\noperations:\n  - backfill: {table: big, set: {w: 'v * 2 + 1'}}\n"
    step = build_plan(parse_change(spec)).for_phase(Phase.MIGRATE)[0]
    engine = BackfillEngine(db, "fill-w", step, BackfillSettings(max_batch_size=500, pause=0.002))
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["state"] = engine.run()
        except Exception as exc:  # the assertion below names it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    kills, chance = 0, random.Random(15)  # noqa: S311 - timing, not secrets
    with psycopg.connect(db, autocommit=True) as killer:
        while thread.is_alive() and kills < 20:
            done = len(engine.state.batches)
            while thread.is_alive() and len(engine.state.batches) == done:  # one batch between kills
                time.sleep(0.005)
            time.sleep(chance.uniform(0.0, 0.02))
            row = killer.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'zdm_runbook:migrate:backfill'"
            ).fetchone()
            kills += int(row[0]) if row else 0
    thread.join(timeout=120)
    engine.close()
    assert "error" not in outcome, outcome.get("error")
    assert kills >= 5 and outcome["state"].reconnects >= 5
    with psycopg.connect(db, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM big WHERE w IS DISTINCT FROM v * 2 + 1").fetchone() == (0,)

"""The backfill's batch statements: composed once, prepared on the server, right for any key."""

from __future__ import annotations

import itertools

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

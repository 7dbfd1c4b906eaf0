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
            " WHERE statement LIKE 'WITH%%zdm_batch_update%%'"
        ).fetchall()
    finally:
        engine.close()

    assert state.rows_updated == ROWS and len(state.batches) == ROWS // 100
    # One batch statement, prepared once and run for every batch after psycopg's threshold of five; the
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


def test_the_batch_statement_stays_on_the_key_index_as_a_generic_plan(db: str) -> None:
    """One statement finds the batch's end and updates up to it; the UPDATE's upper bound is a row
    compared with a CTE's, and must still be an index condition (a sequential scan per batch would
    read the whole table each time), for one backfill and for two sharing the pass."""
    from zdm_runbook.execute.batch_sql import BatchStatements  # noqa: PLC0415
    from zdm_runbook.execute.keyset import table_key  # noqa: PLC0415
    from zdm_runbook.execute.walk import Walk  # noqa: PLC0415

    two = SPEC + '  - backfill: {table: accounts, set: {twice: "n * 2"}}\n'
    steps = build_plan(parse_change(two)).for_phase(Phase.MIGRATE)
    specs = [st.backfill for st in steps if st.backfill is not None]
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(
            "CREATE TABLE accounts (region text, id uuid DEFAULT gen_random_uuid(), n int NOT NULL,"
            " code text, twice int, PRIMARY KEY (region, id))"
        )
        c.execute(
            "INSERT INTO accounts (region, n) SELECT (ARRAY['eu', 'us', 'ap'])[1 + g % 3], g"
            " FROM generate_series(1, 100000) g"
        )
        c.execute("VACUUM ANALYZE accounts")
        c.execute("SET plan_cache_mode = force_generic_plan")
        assert len(specs) == 2
        for walk in (Walk((specs[0],)), Walk(tuple(specs))):
            statements = BatchStatements(table_key(c, specs[0].table), walk)
            query = statements._query(c, "batch", True)
            c.execute(b"PREPARE batch AS " + query)
            plan = "\n".join(
                str(row[0])
                for row in c.execute(
                    "EXPLAIN EXECUTE batch('eu', '00000000-0000-0000-0000-000000000000',"
                    " 'us', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 500)"
                )
            )
            c.execute("DEALLOCATE batch")
            assert "Seq Scan" not in plan, plan
            assert "Update on accounts" in plan
            scans = [line for line in plan.splitlines() if "Index Cond" in line]
            # the keys' walk, then the UPDATE (and, for two, their counts) bounded by the end's CTE
            assert len(scans) >= (2 if len(walk.specs) == 1 else 3), plan
            assert all("ROW(region, id) > ROW($1, $2)" in line for line in scans), plan

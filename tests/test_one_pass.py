"""One pass per table: the backfills of a change on one table write each row once.

Measured, not assumed: the table's ``n_tup_upd`` (row versions written) grows by the number of rows
once for a change with two backfills on one table (two passes grew it by twice that), each step
keeps its own ledger row and counts, and a stopped shared pass resumes from its one checkpoint.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from zdm_runbook.execute.backfill import BackfillEngine, BackfillSettings
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.execute.progress import LogProgress
from zdm_runbook.execute.verify import verify_all
from zdm_runbook.execute.walk import walks
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import scalar
from .sessions import wait_for

ROWS = 3000
SPEC = """\
change: one-pass
operations:
  - change_type: {table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int"}
  - add_not_null_column: {table: orders, column: currency, type: text, default: "'EUR'", backfill: "'EUR'"}
"""


def _fills(spec: str) -> list[list[int]]:
    plan = build_plan(parse_change(spec))
    return walks([st.backfill for st in plan.for_phase(Phase.MIGRATE) if st.backfill is not None])


def test_which_backfills_share_a_pass() -> None:
    assert _fills(SPEC) == [[0, 1]]
    reads_the_other = SPEC + '  - backfill: {table: orders, set: {note: "customer_ref::text"}}\n'
    assert _fills(reads_the_other) == [[0, 1], [2]]  # needs customer_ref filled first
    same_column = SPEC + "  - backfill: {table: orders, set: {currency: \"'USD'\"}}\n"
    assert _fills(same_column) == [[0, 1], [2]]
    other_table = SPEC + '  - backfill: {table: items, set: {w: "v + 1"}}\n'
    assert _fills(other_table) == [[0, 1], [2]]
    # c reads b, b reads a: nothing may move ahead of the fill it reads; d reads neither and joins a.
    chain = (
        "change: chain\noperations:\n"
        '  - backfill: {table: t, set: {a: "v"}}\n'
        '  - backfill: {table: t, set: {b: "a"}}\n'
        '  - backfill: {table: t, set: {c: "b"}}\n'
        '  - backfill: {table: t, set: {d: "v + 1"}}\n'
    )
    assert _fills(chain) == [[0, 3], [1], [2]]


def _orders(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, note text)"
            " WITH (autovacuum_enabled = false)"
        )
        c.execute("INSERT INTO orders SELECT g, g %% 50 + 1 FROM generate_series(1, %s) g", [ROWS])


def _row_versions(dsn: str, counter: str = "n_tup_upd") -> int:
    """``counter`` of orders in ``pg_stat_user_tables`` (``n_tup_upd``: row versions written) once
    every other session has flushed its counts (at its exit)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name LIKE 'zdm_runbook%%'"
        assert wait_for(lambda: c.execute(gone).fetchone() == (True,), 10)
        query = sql.SQL(
            "SELECT pg_stat_clear_snapshot(), {} FROM pg_stat_user_tables WHERE relname = 'orders'"
        ).format(sql.Identifier(counter))
        last = -1
        for _ in range(40):  # until two readings half a second apart agree
            row = c.execute(query).fetchone()
            now = int(row[1]) if row else 0
            if now == last:
                return now
            last = now
            time.sleep(0.5)
    raise AssertionError("the table's update counter did not settle")


def test_two_backfills_on_one_table_write_each_row_once(db: str) -> None:
    _orders(db)
    plan = build_plan(parse_change(SPEC))
    execute_phase(plan, Phase.EXPAND, db)
    with psycopg.connect(db, autocommit=True) as c:  # a third of the rows already have a currency
        c.execute("UPDATE orders SET currency = 'EUR' WHERE id <= %s", [ROWS // 3])
    before = _row_versions(db)
    lines: list[str] = []
    log = LogProgress(0.0, lines.append)
    results = execute_phase(plan, Phase.MIGRATE, db, on_batch=log, backfill_settings={"max_batch_size": 400})
    assert [r.outcome for r in results] == ["applied", "applied"]
    # The headless log has a line per step, each naming its step (they differ in rows updated).
    done = [line for line in lines if line.startswith("done: ")]
    assert [line.split(" of ")[0] for line in done] == [
        "done: backfill 01-change_type-backfill",
        "done: backfill 02-add_not_null_column-backfill",
    ]
    assert f"{ROWS:,} updated" in done[0] and f"{ROWS - ROWS // 3:,} updated" in done[1]
    assert _row_versions(db) - before == ROWS  # one row version per row; two passes wrote 2 * ROWS

    with psycopg.connect(db, autocommit=True) as c:
        rows = c.execute(
            "SELECT step_key, status, rows_scanned, rows_updated FROM zdm.backfills ORDER BY step_key"
        ).fetchall()
        assert rows == [
            ("01-change_type-backfill", "done", ROWS, ROWS),
            ("02-add_not_null_column-backfill", "done", ROWS, ROWS - ROWS // 3),
        ]
        ranges = c.execute(
            "SELECT step_key, array_agg(upper_key ORDER BY batch) FROM zdm.backfill_batches GROUP BY 1"
        ).fetchall()
        assert len(ranges) == 2 and ranges[0][1] == ranges[1][1] and len(ranges[0][1]) >= 5
        messages = c.execute(
            "SELECT message FROM zdm.step_attempts WHERE step_key LIKE '%%backfill' AND outcome = 'applied'"
        ).fetchall()
        assert messages and all("one pass with 01-change_type-backfill, 02-" in m[0] for m in messages)
    assert scalar(db, "SELECT count(*) FROM orders WHERE customer_ref IS NULL OR currency IS NULL") == 0


def test_a_stopped_shared_pass_resumes_from_its_one_checkpoint(db: str) -> None:
    _orders(db)
    plan = build_plan(parse_change(SPEC))
    execute_phase(plan, Phase.EXPAND, db)
    steps = plan.for_phase(Phase.MIGRATE)
    before = _row_versions(db)

    def stop_after_three(state: object) -> None:
        if len(engine.state.batches) == 3:
            raise KeyboardInterrupt

    engine = BackfillEngine(
        db,
        plan.change.id,
        steps,
        BackfillSettings(start_batch_size=300, max_batch_size=300),
        stop_after_three,
    )
    with pytest.raises(KeyboardInterrupt):
        engine.run()
    engine.close()
    with psycopg.connect(db, autocommit=True) as c:
        stopped = c.execute("SELECT status, last_key, rows_scanned FROM zdm.backfills").fetchall()
        assert len(stopped) == 2 and {r[0] for r in stopped} == {"interrupted"}
        assert stopped[0][1:] == stopped[1][1:] and 0 < stopped[0][2] < ROWS

    again = BackfillEngine(
        db, plan.change.id, steps, BackfillSettings(start_batch_size=300, max_batch_size=300)
    )
    try:
        state = again.run()
    finally:
        again.close()
    assert state.resumed_from == stopped[0][2] and state.batches[0].lower == stopped[0][1]
    assert [s.rows_updated for s in again.states] == [ROWS, ROWS]
    assert _row_versions(db) - before == ROWS
    assert scalar(db, "SELECT count(*) FROM orders WHERE customer_ref IS NULL OR currency IS NULL") == 0


def test_the_backfills_of_one_pass_are_verified_in_one_walk(db: str) -> None:
    """Each backfill's mismatches are counted apart, from one read of each batch: the table's index
    fetched each row once (two walks fetched it twice), and ``rest`` paced the reads."""
    _orders(db)
    plan = build_plan(parse_change(SPEC))
    for phase in (Phase.EXPAND, Phase.MIGRATE):
        execute_phase(plan, phase, db)
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("ALTER TABLE orders DISABLE TRIGGER USER")  # what a broken dual-write would leave
        c.execute("UPDATE orders SET customer_ref = -1 WHERE id IN (7, 8, 9)")
        c.execute("UPDATE orders SET currency = NULL WHERE id IN (2, 40, 41, 42, 2999)")
        c.execute("ALTER TABLE orders ENABLE TRIGGER USER")
    specs = [st.backfill for st in plan.for_phase(Phase.MIGRATE) if st.backfill is not None]
    before = _row_versions(db, "idx_tup_fetch")
    reads: list[float] = []

    def rest(seconds: float) -> float:
        reads.append(seconds)
        return 0.05

    started = time.monotonic()
    with psycopg.connect(db, autocommit=True, application_name="zdm_runbook-verify") as c:
        ref, currency = verify_all(c, specs, batch_size=500, rest=rest)
    took = time.monotonic() - started
    assert (ref.rows_checked, ref.mismatches, ref.sample) == (ROWS, 3, [["7"], ["8"], ["9"]])
    assert (currency.rows_checked, currency.mismatches) == (ROWS, 5)
    assert currency.sample == [["2"], ["40"], ["41"], ["42"], ["2999"]]
    assert " rows differ from their expression in customer_ref; first (id): 7; 8; 9" in str(ref)
    assert " rows differ from their expression in currency; " in str(currency), "each line names its column"
    fetched = _row_versions(db, "idx_tup_fetch") - before
    assert ROWS <= fetched < 1.5 * ROWS, f"{fetched} index fetches for {ROWS} rows: more than one walk"
    assert len(reads) == ROWS // 500 and all(r > 0 for r in reads)
    assert took >= 0.05 * len(reads)

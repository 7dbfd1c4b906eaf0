"""Guarded execution against a real server with a real second session as the blocker.

(a) the app never waits much longer than lock_timeout while a blocker holds the table, and the
step retries until it succeeds, naming the blocker; (b) attempts exhausted: a clear error and the
table unchanged; (c) an INVALID unique index is dropped and rebuilt; (d) CONCURRENTLY never inside
a transaction block; (e) a re-run does nothing; (f) a whole plan under a concurrent writer.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from zdm_runbook import ledger
from zdm_runbook.core.errors import ConfigError, ParameterError
from zdm_runbook.execute.attempts import StepFailed
from zdm_runbook.execute.executor import Executor
from zdm_runbook.execute.guard import GuardSettings, settings_from
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.planner import Plan, build_plan
from zdm_runbook.plan.steps import Step
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import columns, scalar
from .sessions import AppProbe, Blocker, wait_for

pytestmark = pytest.mark.pg

FAST = {"backoff_base": "0.1s", "backoff_cap": "0.5s"}
ADD_NOTE = """
change: orders-note
operations:
  - add_column: {table: orders, column: note, type: text}
"""


def _orders(dsn: str, rows: int = 200) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, email text, customer_id int)")
        c.execute(
            "INSERT INTO orders SELECT g, 'c' || g || '@example.org', g %% 20 FROM generate_series(1, %s) g",
            [rows],
        )


def _attempts(dsn: str, change: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return ledger.attempts(c, change).to_dict("records")  # type: ignore[return-value]


def test_a_app_waits_at_most_about_lock_timeout_and_the_step_retries_until_it_succeeds(db: str) -> None:
    _orders(db)
    plan = build_plan(parse_change(ADD_NOTE))
    with (
        AppProbe(db, "SELECT count(*) FROM orders WHERE id = 1", every=0.05) as app,
        Blocker(db, "SELECT count(*) FROM orders", app="billing-report", hold_for=8.0) as blocker,
    ):
        settings = {"lock_timeout": "1s", "max_attempts": 40, "backoff_cap": "2s"}
        results = execute_phase(plan, "expand", db, settings=settings)
        assert blocker.conn.closed, "the step must only succeed once the blocker committed"
    assert app.errors == []
    assert len(app.latencies) > 10
    assert app.max_wait < 2.0, f"an app query waited {app.max_wait:.2f} s behind the DDL (lock_timeout 1 s)"
    assert results[0].outcome == "applied"
    attempts = _attempts(db, "orders-note")
    timeouts = [a for a in attempts if a["outcome"] == "lock_timeout"]
    assert len(timeouts) >= 3
    assert all(a["sqlstate"] == "55P03" for a in timeouts)
    assert all(blocker.pid in [b["pid"] for b in a["blockers"]] for a in timeouts)
    assert all(b["application_name"] == "billing-report" for a in timeouts for b in a["blockers"])
    # The lock-wait ladder: the first attempts give up soon; the wait doubles up to lock_timeout.
    rungs = [float(a["settings"]["lock_timeout"]) for a in timeouts]
    assert rungs[:4] == [0.1, 0.2, 0.4, 0.8] and all(r == 1.0 for r in rungs[4:]), rungs
    assert all(0.9 * r <= a["lock_wait_s"] <= r + 0.5 for a, r in zip(timeouts, rungs, strict=True))
    assert attempts[-1]["outcome"] == "applied"
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert "note" in columns(db, "orders")


def test_b_attempts_exhausted_lists_the_blocker_and_leaves_the_table_unchanged(db: str) -> None:
    _orders(db)
    plan = build_plan(parse_change(ADD_NOTE))
    settings = {"lock_timeout": "300ms", "max_attempts": 3, **FAST}
    with (
        Blocker(db, "SELECT count(*) FROM orders", app="billing-report") as blocker,
        pytest.raises(StepFailed) as err,
    ):
        execute_phase(plan, "expand", db, settings=settings)
    message = str(err.value)
    assert err.value.sqlstate == "55P03"
    assert err.value.key == "01-add_column-add-column"
    assert "3 attempts, each ended by lock_timeout" in message
    assert f"pid {blocker.pid} (billing-report) idle in transaction" in message
    assert "holds AccessShareLock" in message
    assert "SELECT count(*) FROM orders" in message
    assert "Nothing of the step is applied" in message
    assert "note" not in columns(db, "orders")
    assert [a["outcome"] for a in _attempts(db, "orders-note")] == ["lock_timeout"] * 3


def test_c_invalid_unique_index_is_dropped_and_rebuilt_after_the_data_is_fixed(any_pg_db: str) -> None:
    db = any_pg_db
    _orders(db)
    scalar(db, "UPDATE orders SET email = 'dup@example.org' WHERE id IN (1, 2) RETURNING 1")
    spec = """
change: orders-email-unique
operations:
  - create_index: {table: orders, name: orders_email_key, columns: [email], unique: true}
"""
    plan = build_plan(parse_change(spec))
    with pytest.raises(StepFailed) as err:
        execute_phase(plan, "expand", db)
    assert err.value.sqlstate == "23505"
    assert len(err.value.attempts) == 1, "a unique violation is a data problem: not retried"
    assert "INVALID index it left is rebuilt on the next run" in str(err.value)
    invalid = "SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass AND NOT indisvalid"
    assert scalar(db, invalid) == 1
    scalar(db, "UPDATE orders SET email = 'c2@example.org' WHERE id = 2 RETURNING 1")
    results = execute_phase(plan, "expand", db)
    assert results[0].outcome == "applied"
    assert "dropped INVALID index public.orders_email_key" in (results[0].attempts[0].message or "")
    assert scalar(db, invalid) == 0
    assert scalar(db, "SELECT indisunique FROM pg_index WHERE indexrelid = 'orders_email_key'::regclass")


def test_c_a_build_in_progress_is_never_dropped(db: str) -> None:
    _orders(db)
    spec = """
change: orders-email-idx
operations:
  - create_index: {table: orders, name: orders_email_idx, columns: [email]}
"""
    plan = build_plan(parse_change(spec))
    # Another session's concurrent build waits for the blocker's old snapshot: its index is INVALID meanwhile.
    snapshot = ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT count(*) FROM orders")
    with Blocker(db, *snapshot, app="reporting") as blocker:
        builder = psycopg.connect(db, autocommit=True, application_name="other-deploy")
        thread = threading.Thread(
            target=lambda: builder.execute("CREATE INDEX CONCURRENTLY orders_email_idx ON orders (email)")
        )
        thread.start()
        assert wait_for(lambda: scalar(db, "SELECT count(*) FROM pg_stat_progress_create_index") == 1)
        with pytest.raises(StepFailed, match=r"being built right now by pid \d+: not dropping it"):
            execute_phase(plan, "expand", db, settings={"max_attempts": 1})
        blocker.release()
        thread.join()
        builder.close()
    assert execute_phase(plan, "expand", db)[0].outcome == "skipped"


def test_d_concurrently_never_runs_inside_a_transaction_block(db: str) -> None:
    _orders(db)
    spec = """
change: orders-indexes
operations:
  - create_index: {table: orders, name: orders_customer_idx, columns: [customer_id]}
  - raw_sql: {phase: expand, reason: "hash index for lookups", description: "hash index",
              sql: "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_email_hash ON orders USING hash (email)"}
  - drop_index: {name: orders_customer_idx}
"""
    plan = build_plan(parse_change(spec))
    assert [st.transactional for st in plan.steps] == [False, False, False]
    with (
        psycopg.connect(db) as not_autocommit,
        psycopg.connect(db, autocommit=True) as control,
        pytest.raises(ConfigError, match="worker connection must be in autocommit mode"),
    ):
        Executor(not_autocommit, control, plan)
    with psycopg.connect(db, autocommit=True) as worker, psycopg.connect(db, autocommit=True) as control:
        ledger.ensure(control)
        ledger.record_change(control, plan.change.id, "", "x")
        worker.execute("SET lock_timeout = '7s'")
        ex = Executor(worker, control, plan)
        with worker.transaction(), pytest.raises(StepFailed, match="inside a transaction"):
            ex.run_step(plan.steps[0])
        assert scalar(db, "SELECT to_regclass('orders_customer_idx')") is None
        # PostgreSQL itself refuses CONCURRENTLY in a transaction block (25001): success proves it ran alone.
        for phase in (Phase.EXPAND, Phase.CONTRACT):
            assert {r.outcome for r in ex.run_phase(phase)} == {"applied"}
        restored = worker.execute("SHOW lock_timeout").fetchone()
        assert restored == ("7s",), "session settings around a CONCURRENTLY statement must be restored"
    assert scalar(db, "SELECT to_regclass('orders_email_hash') IS NOT NULL")
    assert scalar(db, "SELECT to_regclass('orders_customer_idx')") is None


def test_e_a_rerun_after_success_does_nothing_even_under_a_blocker(db: str) -> None:
    _orders(db)
    plan = build_plan(parse_change(ADD_NOTE))
    execute_phase(plan, "expand", db)
    with Blocker(db, "SELECT count(*) FROM orders"):
        again = execute_phase(plan, "expand", db, settings={"lock_timeout": "200ms", "max_attempts": 1})
    assert [r.outcome for r in again] == ["skipped"]
    assert [a["outcome"] for a in _attempts(db, "orders-note")] == ["applied", "skipped"]


def test_e_raw_sql_without_a_guard_is_skipped_by_the_ledger(db: str) -> None:
    _orders(db)
    spec = """
change: orders-comment
operations:
  - raw_sql: {phase: expand, reason: "document the table", description: "comment",
              sql: "COMMENT ON TABLE orders IS 'orders of the shop'"}
"""
    plan = build_plan(parse_change(spec))
    assert [r.outcome for r in execute_phase(plan, "expand", db)] == ["applied"]
    assert [r.outcome for r in execute_phase(plan, "expand", db)] == ["skipped"]


def test_f_a_whole_plan_phase_by_phase_under_a_concurrent_writer(any_pg_db: str) -> None:
    db = any_pg_db
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(
            "CREATE TABLE orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, customer_id int)"
        )
        c.execute("INSERT INTO orders (customer_id) SELECT g % 50 FROM generate_series(1, 20000) g")
    spec = """
change: orders-customer-ref
operations:
  - change_type: {table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int", not_null: true}
  - add_not_null_column: {table: orders, column: currency, type: text, backfill: "'EUR'", default: "'EUR'"}
  - create_index: {table: orders, name: orders_customer_ref_idx, columns: [customer_ref]}
"""
    plan = build_plan(parse_change(spec))
    settings = {"lock_timeout": "1s", **FAST}
    old_app = "INSERT INTO orders (customer_id) VALUES (7); UPDATE orders SET customer_id = 8 WHERE id = 1"
    new_app = "INSERT INTO orders (customer_ref) VALUES (9); UPDATE orders SET customer_ref = 10 WHERE id = 2"
    with AppProbe(db, old_app, every=0.01, app="old-app") as writer:
        for phase in (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH):
            results = execute_phase(plan, phase, db, settings=settings)
            assert {r.outcome for r in results} == {"applied"}, phase
            done = len(writer.latencies)
            assert wait_for(lambda n=done: len(writer.latencies) >= n + 5), "the old app keeps writing"
    assert writer.errors == []
    assert writer.max_wait < 2.0
    with AppProbe(db, new_app, every=0.01, app="new-app") as writer:
        results = execute_phase(plan, Phase.CONTRACT, db, settings=settings)
        assert wait_for(lambda: len(writer.latencies) >= 5)
    assert writer.errors == []
    assert {r.outcome for r in results} == {"applied"}
    cols = columns(db, "orders")
    assert "customer_id" not in cols
    assert cols["customer_ref"] == ("bigint", True)
    assert cols["currency"] == ("text", True)
    assert scalar(db, "SELECT count(*) FROM orders WHERE customer_ref IS NULL") == 0
    for phase in Phase:
        again = execute_phase(plan, phase, db, settings=settings)
        assert {r.outcome for r in again} <= {"skipped"}, phase


def test_contract_drops_trigger_and_column_together_or_not_at_all(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders VALUES (1, 'a')")
    plan = build_plan(
        parse_change("""
change: rename-note
operations:
  - rename_column: {table: orders, from: note, to: remark, type: text}
""")
    )
    for phase in (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH):
        execute_phase(plan, phase, db)
    trigger = "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal"
    assert scalar(db, trigger) == 2  # the dual-write's UPDATE and INSERT triggers
    with Blocker(db, "SELECT count(*) FROM orders"), pytest.raises(StepFailed):
        execute_phase(plan, Phase.CONTRACT, db, settings={"lock_timeout": "200ms", "max_attempts": 2, **FAST})
    assert scalar(db, trigger) == 2, "a failed contract step must leave the triggers with the old column"
    assert "note" in columns(db, "orders")
    execute_phase(plan, Phase.CONTRACT, db)
    assert scalar(db, trigger) == 0
    assert "note" not in columns(db, "orders")


def _custom_plan(*statements: str, transactional: bool = True, key: str = "01-custom") -> Plan:
    change = parse_change("change: custom\noperations:\n  - add_column: {table: a, column: x, type: int}\n")
    step = Step(
        key,
        Phase.EXPAND,
        "custom",
        tuple(sql.SQL(s) for s in statements),
        transactional=transactional,  # type: ignore[arg-type]
    )
    return Plan(change, (step,))


def _executor(worker: Any, control: Any, plan: Plan, **settings: Any) -> Executor:
    ledger.ensure(control)
    ledger.record_change(control, plan.change.id, "", "x")
    return Executor(worker, control, plan, settings=GuardSettings(**settings))


def test_a_deadlock_is_retried(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE a (id int); CREATE TABLE b (id int)")
    plan = _custom_plan("LOCK TABLE a IN ROW EXCLUSIVE MODE", "LOCK TABLE b IN SHARE MODE")
    other = psycopg.connect(db, application_name="other")
    other.execute("SET deadlock_timeout = '10s'")  # the step's session detects the deadlock first
    other.execute("LOCK TABLE b IN ROW EXCLUSIVE MODE")

    def close_the_cycle() -> None:
        other.execute("LOCK TABLE a IN ACCESS EXCLUSIVE MODE")  # waits for the step, which waits for us
        other.commit()

    with psycopg.connect(db, autocommit=True) as worker, psycopg.connect(db, autocommit=True) as control:
        # No ladder: the first attempt must still be waiting when the cycle closes.
        ex = _executor(
            worker, control, plan, lock_timeout=5.0, lock_timeout_first=0.0, backoff_base=0.1, backoff_cap=0.2
        )
        thread = threading.Timer(0.3, close_the_cycle)
        thread.start()
        result = ex.run_step(plan.steps[0])
        thread.join()
    other.close()
    assert [a.outcome for a in result.attempts] == ["deadlock", "applied"]
    assert result.attempts[0].sqlstate == "40P01"


def test_statement_timeout_is_reported_not_retried(db: str) -> None:
    plan = _custom_plan("SELECT pg_sleep(2)")
    with psycopg.connect(db, autocommit=True) as worker, psycopg.connect(db, autocommit=True) as control:
        ex = _executor(worker, control, plan, lock_timeout=0.1, statement_timeout=0.3)
        with pytest.raises(StepFailed) as err:
            ex.run_step(plan.steps[0])
    assert err.value.sqlstate == "57014"
    assert [a.outcome for a in err.value.attempts] == ["query_canceled"]
    assert "not retried blindly: raise statement_timeout for this step" in str(err.value)


def test_bad_parameters_change_nothing(db: str) -> None:
    _orders(db)
    plan = build_plan(parse_change(ADD_NOTE))
    with pytest.raises(ParameterError) as err:
        execute_phase(
            plan,
            "expand",
            db,
            settings={"lock_timeout": "forever"},
            step_settings={"99-nope": {"lock_timeout": "1s"}},
        )
    assert [p.path for p in err.value.problems] == ["guard.lock_timeout"]
    with pytest.raises(ParameterError, match=r"step_settings.99-nope: no such step in this phase"):
        execute_phase(plan, "expand", db, step_settings={"99-nope": {"lock_timeout": "1s"}})
    with pytest.raises(ParameterError, match=r"backfill.max_batch_size: must be a whole number"):
        execute_phase(plan, "expand", db, backfill_settings={"max_batch_size": -5})
    assert scalar(db, "SELECT to_regnamespace('zdm')") is None
    assert "note" not in columns(db, "orders")


def test_per_step_settings_reach_the_server(db: str) -> None:
    _orders(db)
    plan = build_plan(parse_change(ADD_NOTE))
    key = plan.steps[0].key
    execute_phase(
        plan,
        "expand",
        db,
        step_settings={
            key: {"lock_timeout": "250ms", "lock_timeout_first": "250ms", "statement_timeout": "9s"}
        },
    )
    settings = _attempts(db, "orders-note")[0]["settings"]
    assert settings == {"lock_timeout": 0.25, "statement_timeout": 9.0}  # attempt 1 on the step's ladder


def test_a_running_change_is_not_run_twice(db: str) -> None:
    _orders(db)
    plan = build_plan(parse_change(ADD_NOTE))
    with psycopg.connect(db, autocommit=True, application_name="zdm_runbook:expand") as other:
        ledger.ensure(other)
        ledger.lock_change(other, "orders-note")
        with pytest.raises(Exception, match=r"change orders-note is being run right now by pid"):
            execute_phase(plan, "expand", db)
    assert "note" not in columns(db, "orders")


def test_a_step_leaves_in_one_pipeline_its_commit_sent_before_any_reply(db: str, tmp_path: Path) -> None:
    """The lock a step's first statement takes is held for the statements' time, not for a round
    trip each: libpq's own trace of the worker shows COMMIT sent before the server's first reply."""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE a (id int)")
    plan = _custom_plan("ALTER TABLE a ADD COLUMN x int", "ALTER TABLE a ADD COLUMN y int")
    trace = tmp_path / "libpq.trace"
    with psycopg.connect(db, autocommit=True) as worker, psycopg.connect(db, autocommit=True) as control:
        ex = _executor(worker, control, plan)
        with trace.open("w") as out:
            worker.pgconn.trace(out.fileno())
            worker.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            result = ex.run_step(plan.steps[0])
            worker.pgconn.untrace()
    assert result.outcome == "applied"
    assert {"x", "y"} <= set(columns(db, "a"))
    lines = trace.read_text().splitlines()
    sent_commit = next(i for i, line in enumerate(lines) if line.split()[0] == "F" and "COMMIT" in line)
    first_reply = next(i for i, line in enumerate(lines) if line.split()[0] == "B")
    assert sent_commit < first_reply, "\n".join(lines)


def test_a_failing_statement_mid_step_leaves_nothing_applied_and_the_worker_ready(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE a (id int)")
    plan = _custom_plan("ALTER TABLE a ADD COLUMN x int", "ALTER TABLE a ALTER COLUMN nope SET NOT NULL")
    with psycopg.connect(db, autocommit=True) as worker, psycopg.connect(db, autocommit=True) as control:
        ex = _executor(worker, control, plan)
        with pytest.raises(StepFailed) as err:
            ex.run_step(plan.steps[0])
        assert worker.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        held = "SELECT count(*) FROM pg_locks WHERE pid = %s AND relation = 'a'::regclass"
        assert scalar(db, held, [worker.info.backend_pid]) == 0
        assert worker.execute("SELECT 1").fetchone() == (1,)  # the next step can use it
    assert err.value.sqlstate == "42703"
    assert [a.outcome for a in err.value.attempts] == ["failed"]
    assert "x" not in columns(db, "a"), "the first statement must be rolled back with the second"


def test_cancel_autovacuum_must_be_true_or_false() -> None:
    with pytest.raises(ParameterError, match=r"guard.cancel_autovacuum: must be true or false"):
        settings_from({"cancel_autovacuum": "yes"})
    assert settings_from({"cancel_autovacuum": False}).cancel_autovacuum is False

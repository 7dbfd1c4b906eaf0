"""An anti-wraparound autovacuum on a step's table: the executor does not send the step.

A real one: the table's ``autovacuum_freeze_max_age`` is set to its minimum (100,000), 110,000
transaction ids are consumed (one subtransaction each), and autovacuum, woken every second,
starts ``VACUUM ... (to prevent wraparound)`` on it, slowed by its cost delay so it keeps running.
Measured on 15.18 and 18.6 (2026-12-02): such a vacuum does not give way to a DDL's lock request
as other autovacuums do; an ``ALTER TABLE ... ADD COLUMN`` waited its whole 5 s lock_timeout.
"""

from __future__ import annotations

import psycopg
import pytest

from zdm_runbook.execute.attempts import StepFailed
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import columns
from .sessions import wait_for

pytestmark = pytest.mark.pg
SPEC = "change: add-x\noperations:\n  - add_column: {table: w, column: x, type: int}\n"
SLOW_AUTOVACUUM = (
    ("autovacuum_naptime", "1s"),
    ("autovacuum_vacuum_cost_delay", "100ms"),
    ("autovacuum_vacuum_cost_limit", "1"),
)
WRAPAROUND = (
    "SELECT pid FROM pg_stat_progress_vacuum JOIN pg_stat_activity USING (pid)"
    " WHERE relid = 'w'::regclass AND query LIKE '%%(to prevent wraparound)%%'"
)


def test_a_step_is_not_sent_while_an_anti_wraparound_vacuum_runs_on_its_table(any_pg_db: str) -> None:
    with psycopg.connect(any_pg_db, autocommit=True) as c:
        c.execute("CREATE TABLE w (id int PRIMARY KEY, v text) WITH (autovacuum_freeze_max_age = 100000)")
        c.execute("INSERT INTO w SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g")
        c.execute("CREATE TEMP TABLE burn (i int)")
        c.execute(
            "DO $$ BEGIN FOR i IN 1..110000 LOOP"
            " BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN others THEN NULL; END;"
            " END LOOP; END $$"
        )
        for name, value in SLOW_AUTOVACUUM:
            c.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        c.execute("SELECT pg_reload_conf()")
        try:
            assert wait_for(lambda: c.execute(WRAPAROUND).fetchone() is not None, 60, 0.2)
            pid = c.execute(WRAPAROUND).fetchone()
            plan = build_plan(parse_change(SPEC))
            with pytest.raises(StepFailed) as failed:
                execute_phase(plan, Phase.EXPAND, any_pg_db)
            text = str(failed.value)
            assert "was not sent" in text and "anti-wraparound vacuum" in text and f"pid {pid[0]}" in text
            assert "x" not in columns(any_pg_db, "w")
            attempts = c.execute("SELECT attempt, outcome, lock_wait_s FROM zdm.step_attempts").fetchall()
            assert attempts == [(1, "no-go", 0.0)]
        finally:
            for name, _ in SLOW_AUTOVACUUM:
                c.execute(f"ALTER SYSTEM RESET {name}")
            c.execute("SELECT pg_reload_conf()")
        # Once the table is frozen (our VACUUM, after ending the autovacuum), the step goes through.
        c.execute("SET lock_timeout = '200ms'")
        for _ in range(50):
            c.execute(WRAPAROUND.replace("SELECT pid", "SELECT pg_terminate_backend(pid)"))
            try:
                c.execute("VACUUM (FREEZE) w")
                break
            except psycopg.errors.LockNotAvailable:
                continue
    assert execute_phase(plan, Phase.EXPAND, any_pg_db)[0].outcome == "applied"
    assert "x" in columns(any_pg_db, "w")


REGULAR = (
    "SELECT pid FROM pg_stat_progress_vacuum JOIN pg_stat_activity USING (pid)"
    " WHERE relid = 'v'::regclass AND query NOT LIKE '%%(to prevent wraparound)%%'"
)


def test_a_regular_autovacuum_is_cancelled_before_an_attempt_instead_of_failing_every_one(
    any_pg_db: str,
) -> None:
    """A regular autovacuum yields to DDL only after the DDL has waited ``deadlock_timeout``
    (1 s); an attempt gives up sooner. Measured here with ``cancel_autovacuum`` off: both attempts
    fail behind the vacuum. On (the default): it is cancelled, the step applies at once."""
    spec = "change: add-y\noperations:\n  - add_column: {table: v, column: y, type: int}\n"
    with psycopg.connect(any_pg_db, autocommit=True) as c:
        c.execute(
            "CREATE TABLE v (id int PRIMARY KEY, t text) WITH (autovacuum_vacuum_threshold = 0,"
            " autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_delay = 100,"
            " autovacuum_vacuum_cost_limit = 1)"
        )
        c.execute("INSERT INTO v SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g")
        c.execute("DELETE FROM v WHERE id % 2 = 0")
        c.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
        c.execute("SELECT pg_reload_conf()")
        try:
            assert wait_for(lambda: c.execute(REGULAR).fetchone() is not None, 60, 0.2)
        finally:
            c.execute("ALTER SYSTEM RESET autovacuum_naptime")
            c.execute("SELECT pg_reload_conf()")
        vacuum = c.execute(REGULAR).fetchone()
        assert vacuum is not None
        plan = build_plan(parse_change(spec))
        off = {"cancel_autovacuum": False, "max_attempts": 2, "lock_timeout": "1s"}
        off |= {"backoff_base": "0.1s", "backoff_cap": "0.1s"}
        with pytest.raises(StepFailed) as failed:
            execute_phase(plan, Phase.EXPAND, any_pg_db, settings=off)
        assert [a.outcome for a in failed.value.attempts] == ["lock_timeout", "lock_timeout"]
        assert "autovacuum: VACUUM" in str(failed.value) and "y" not in columns(any_pg_db, "v")
        assert c.execute(REGULAR).fetchone() == vacuum, "the same vacuum outlasted both attempts"

        result = execute_phase(plan, Phase.EXPAND, any_pg_db)[0]
        assert [a.outcome for a in result.attempts] == ["applied"]
        assert f"cancelled autovacuum pid {vacuum[0]} on v" in str(result.attempts[0].message)
        assert "y" in columns(any_pg_db, "v")
        recorded = c.execute(
            "SELECT message FROM zdm.step_attempts WHERE outcome = 'applied' ORDER BY attempt_id DESC LIMIT 1"
        ).fetchone()
        assert recorded is not None and f"pid {vacuum[0]}" in recorded[0]

"""change_key_type when a partitioned table references the key, and when the key's own table does
(a self-reference), on real servers (18, and 15).

Before PostgreSQL 18 a partitioned table takes no NOT VALID foreign key, so the twins go on its
leaf partitions, are validated there, and the partitioned table's own twin then attaches them.
Whether it attached them or made new ones (which PostgreSQL would validate by scanning each
partition) is read from the catalog: an attached twin keeps its oid and gains a parent."""

from __future__ import annotations

from typing import Any

import psycopg

from zdm_runbook.execute.executor import Executor
from zdm_runbook.lint.analysis import LOCK_MODES
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change

from .helpers import apply_phase, scalar

SCHEMA = """
CREATE TABLE employees (id serial PRIMARY KEY, name text NOT NULL,
    manager_id int REFERENCES employees (id) ON DELETE SET NULL);
INSERT INTO employees (name) SELECT 'e' || g FROM generate_series(1, 300) g;
UPDATE employees SET manager_id = (id - 1) / 10 WHERE id > 10;
CREATE TABLE events (id int NOT NULL, employee_id int REFERENCES employees (id) ON DELETE CASCADE,
    at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 (at date NOT NULL, employee_id int, id int NOT NULL);  -- columns in another order
ALTER TABLE events ATTACH PARTITION events_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, g % 300 + 1, DATE '2025-03-01' + g FROM generate_series(1, 600) g;
"""
SPEC = "change: employees-id\noperations:\n  - change_key_type: {table: employees, column: id}\n"
FKS = (
    "SELECT string_agg(conrelid::regclass || ':' || conname || ':' || convalidated || ':'"
    " || pg_get_constraintdef(oid), ' | ' ORDER BY conrelid::regclass::text)"
    " FROM pg_constraint WHERE contype = 'f' AND confrelid = 'employees'::regclass"
)


def _held(dsn: str, statement: Any) -> dict[str, str]:
    """Run ``statement`` in a transaction that is rolled back: the strongest lock each of the
    change's tables got."""
    strongest: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction(force_rollback=True):
        conn.execute(statement)
        for rel, mode in conn.execute(
            "SELECT relation::regclass::text, mode FROM pg_locks WHERE pid = pg_backend_pid()"
            " AND locktype = 'relation' AND relation::regclass::text LIKE ANY (ARRAY['employees', 'events%%'])"
        ):
            if LOCK_MODES.index(mode) >= LOCK_MODES.index(strongest.get(rel, mode)):
                strongest[rel] = mode
    return strongest


def _apps_work(dsn: str, name: str) -> None:
    """The old app and the new one alike: an employee under a manager, an event of theirs, a
    manager deleted (their reports' manager_id set NULL, their events deleted)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO employees (name, manager_id) VALUES (%s, 3) RETURNING id", [name]
        ).fetchone()
        assert row is not None
        conn.execute("INSERT INTO events VALUES (9999, %s, '2026-05-01')", [row[0]])
        conn.execute("DELETE FROM employees WHERE id = %s", [row[0]])
        assert conn.execute("SELECT count(*) FROM events WHERE employee_id = %s", [row[0]]).fetchone() == (0,)


def test_a_key_that_a_partitioned_table_and_its_own_table_reference_becomes_bigint(any_pg_db: str) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    before = scalar(dsn, FKS)
    plan = build_plan(parse_change(SPEC))
    for phase in ("expand", "migrate"):
        assert apply_phase(dsn, plan, phase), phase
        _apps_work(dsn, f"after {phase}")
    seen: dict[str, Any] = {}

    def look(step: Any) -> None:
        if step.key.endswith("-fk-validate"):  # the leaves' twins, before the attach
            seen["leaves"] = scalar(
                dsn,
                "SELECT array_agg(oid ORDER BY oid) FROM pg_constraint WHERE conrelid IN"
                " ('events_2025'::regclass, 'events_2026'::regclass) AND conname LIKE '%%_zdm_%%'"
                " AND convalidated AND conparentid = 0",
            )
            seen["attach locks"] = _held(dsn, step_statement["attach"])

    step_statement = {"attach": next(st for st in plan.steps if st.key.endswith("-fk-attach")).statements[0]}
    with psycopg.connect(dsn, autocommit=True) as worker, psycopg.connect(dsn, autocommit=True) as control:
        results = Executor(worker, control, plan, after_step=look).run_phase("switch")
    outcomes = {r.key.split("-", 2)[2]: r.outcome for r in results}
    if version < 180000:
        # Twins on each leaf, validated there, then attached by the partitioned table's own twin.
        assert seen["leaves"] is not None and len(seen["leaves"]) == 2
        # Measured on 15: attaching drops each partition's own triggers on employees, which takes
        # ACCESS EXCLUSIVE there; the step takes it first rather than upgrading to it later.
        family = ("events", "events_2025", "events_2026")
        assert seen["attach locks"] == {
            "employees": "AccessExclusiveLock",
            **dict.fromkeys(family, "ShareRowExclusiveLock"),
        }
        attach = next(st for st in plan.steps if st.key.endswith("-fk-attach"))
        assert "public.employees AccessExclusiveLock" in (attach.locks or "")
        assert outcomes["fk-attach"] == "applied"
        # Attached, not made anew (a new one PostgreSQL validates by scanning each partition): the
        # partitions' foreign keys now are the very twins validated on them before the attach.
        attached = scalar(
            dsn,
            "SELECT array_agg(oid ORDER BY oid) FROM pg_constraint WHERE conrelid IN"
            " ('events_2025'::regclass, 'events_2026'::regclass) AND conname = 'events_employee_id_fkey'"
            " AND conparentid <> 0",
        )
        assert attached == seen["leaves"]
    else:
        assert seen["leaves"] is None, "18 and later: the twin goes on the partitioned table itself"
        assert seen["attach locks"] == {}, "nothing to attach, no lock taken"
        assert outcomes["fk-attach"] == "skipped"
    _apps_work(dsn, "after switch")
    # Every foreign key, clones on the partitions included, back under its own name, valid, on the
    # bigint key.
    assert scalar(dsn, FKS) == before
    assert (
        scalar(
            dsn,
            "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'employees'::regclass AND attname = 'id'",
        )
        == "bigint"
    )
    assert apply_phase(dsn, plan, "contract") == {"01-change_key_type-drop-old": "applied"}
    _apps_work(dsn, "after contract")
    assert scalar(dsn, FKS) == before

"""change_key_type when a partitioned table references the key, and when the key's own table does
(a self-reference), on real servers (18, and 15).

Before PostgreSQL 18 a partitioned table takes no NOT VALID foreign key, so the twins go on its
leaf partitions, are validated there, and the partitioned table's own twin then attaches them.
Whether it attached them or made new ones (which PostgreSQL would validate by scanning each
partition) is read from the catalog: an attached twin keeps its oid and gains a parent."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.execute.executor import Executor
from zdm_runbook.lint.analysis import LOCK_MODES
from zdm_runbook.plan.index_twins import twin_name
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.catalog import check_change
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


def _held(dsn: str, statement: Any, tables: tuple[str, ...] = ("employees", "events%")) -> dict[str, str]:
    """Run ``statement`` in a transaction that is rolled back: the strongest lock each of the
    change's tables (names LIKE ``tables``) got."""
    strongest: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction(force_rollback=True):
        conn.execute(statement)
        for rel, mode in conn.execute(
            "SELECT relation::regclass::text, mode FROM pg_locks WHERE pid = pg_backend_pid()"
            " AND locktype = 'relation' AND relation::regclass::text LIKE ANY (%s)",
            [list(tables)],
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


HOLDER_SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 200) g;
CREATE TABLE visits (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL, kind text NOT NULL,
    customer_id int NOT NULL REFERENCES customers ON DELETE CASCADE,
    referrer_id int REFERENCES customers (id) ON DELETE SET NULL, PRIMARY KEY (id, at, kind))
    PARTITION BY RANGE (at);
CREATE TABLE visits_2025 PARTITION OF visits FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE visits_2026 PARTITION OF visits FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
    PARTITION BY LIST (kind);
CREATE TABLE visits_2026_web PARTITION OF visits_2026 FOR VALUES IN ('web');
CREATE TABLE visits_2026_rest PARTITION OF visits_2026 DEFAULT;
CREATE INDEX visits_customer_at ON visits (customer_id, at DESC) INCLUDE (kind);
CREATE INDEX visits_referred ON visits (referrer_id, at) WHERE referrer_id IS NOT NULL;
INSERT INTO visits (at, kind, customer_id, referrer_id)
    SELECT DATE '2025-06-01' + g % 400, (ARRAY['web', 'app'])[1 + g % 2], 1 + g % 200,
        CASE WHEN g % 3 = 0 THEN 1 + g % 7 END FROM generate_series(1, 3000) g;
"""
HOLDER_SPEC = """change: visits-bigint
operations:
  - change_key_type: {table: customers, column: id}
  - change_key_type: {table: visits, column: customer_id}
  - change_key_type: {table: visits, column: referrer_id}
"""
TREE = "(SELECT relid FROM pg_partition_tree('visits'))"
PARTITIONS = "(SELECT relid FROM pg_partition_tree('visits') WHERE level > 0)"
TREE_FKS = (
    "SELECT string_agg(conrelid::regclass || ':' || conname || ':' || convalidated || ':'"
    f" || pg_get_constraintdef(oid), ' | ' ORDER BY conrelid::regclass::text, conname)"
    f" FROM pg_constraint WHERE contype = 'f' AND conrelid IN {TREE}"
)
TREE_INDEXES = (
    "SELECT string_agg(pg_get_indexdef(indexrelid), ' | ' ORDER BY indexrelid::regclass::text)"
    f" FROM pg_index WHERE indrelid IN {TREE}"
)
TREE_COLUMNS = (
    "SELECT string_agg(DISTINCT attname || ' ' || format_type(atttypid, NULL)"
    " || CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ')"
    f" FROM pg_attribute WHERE attrelid IN {TREE} AND attname IN ('customer_id', 'referrer_id')"
)


def _visits_work(dsn: str, name: str, old_app: bool = True) -> int:
    """A customer's visits in two partitions (one a sub-partition), one referred by them; the
    customer deleted: their visits go, the referral keeps its row with no referrer. The old app
    also inserts without a column list, in the table's order. Returns the customer's id."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("INSERT INTO customers (name) VALUES (%s) RETURNING id", [name]).fetchone()
        assert row is not None
        cid = int(row[0])
        conn.execute(
            "INSERT INTO visits (at, kind, customer_id) VALUES ('2025-07-01', 'app', %s), ('2026-02-01', 'web', %s)",
            [cid, cid],
        )
        conn.execute(
            "INSERT INTO visits (at, kind, customer_id, referrer_id) VALUES ('2026-03-01', 'app', 5, %s)",
            [cid],
        )
        if old_app:
            conn.execute("INSERT INTO visits VALUES (DEFAULT, '2026-04-01', 'web', %s, NULL)", [cid])
        seen = conn.execute("SELECT count(*) FROM visits WHERE customer_id = %s", [cid]).fetchone()
        assert seen == (3 if old_app else 2,), (name, seen)
        conn.execute("DELETE FROM customers WHERE id = %s", [cid])
        assert conn.execute("SELECT count(*) FROM visits WHERE customer_id = %s", [cid]).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM visits WHERE at = '2026-03-01' AND customer_id = 5 AND referrer_id IS NULL"
        ).fetchone() >= (1,)
        return cid


def test_the_columns_of_a_partitioned_table_that_hold_a_key_become_bigint(any_pg_db: str) -> None:
    """A partitioned table's foreign key columns (large event tables hold user ids) were refused.
    Now they are widened like a plain table's: each partition's index and foreign key keeps its
    name, and before 18 the twins go on the leaves and are attached, as for a key's referencing
    partitioned table."""
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(HOLDER_SCHEMA.encode())
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
        change = parse_change(HOLDER_SPEC)
        assert check_change(conn, change) == []
    fks, indexes = scalar(dsn, TREE_FKS), scalar(dsn, TREE_INDEXES)
    plan = build_plan(change)
    for phase in ("expand", "migrate"):
        assert "failed" not in apply_phase(dsn, plan, phase).values()
        _visits_work(dsn, f"after {phase}")
    seen: dict[str, Any] = {}

    def look(step: Any) -> None:
        if step.key == "02-change_key_type-fk-validate":  # the leaves' twins, before the attach
            seen["leaves"] = scalar(
                dsn,
                f"SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid IN {PARTITIONS}"
                " AND conname LIKE '%%_zdm_%%'"
                " AND convalidated AND conparentid = 0",
            )
            seen["attach locks"] = _held(dsn, attach.statements[0], ("customers", "visits%"))

    attach = next(st for st in plan.steps if st.key == "02-change_key_type-fk-attach")
    with psycopg.connect(dsn, autocommit=True) as conn:  # a switch that stopped after its first piece
        conn.execute(
            sql.SQL("CREATE INDEX {} ON ONLY visits (customer_id_zdm, at DESC) INCLUDE (kind)").format(
                sql.Identifier(twin_name("visits_customer_at"))
            )
        )
    with psycopg.connect(dsn, autocommit=True) as worker, psycopg.connect(dsn, autocommit=True) as control:
        results = Executor(worker, control, plan, after_step=look).run_phase("switch")
    outcomes = {r.key: r.outcome for r in results}
    assert "failed" not in outcomes.values()
    if version < 180000:
        assert seen["leaves"] == 3, "the twin on each of the three leaves, validated there"
        # Measured on 15: attaching the holder's own twin drops each leaf's triggers on customers
        # (ACCESS EXCLUSIVE there), and takes the partitioned table and its partitions SHARE ROW
        # EXCLUSIVE; the step takes customers first.
        family = ("visits", "visits_2025", "visits_2026", "visits_2026_rest", "visits_2026_web")
        assert seen["attach locks"] == {
            "customers": "AccessExclusiveLock",
            **dict.fromkeys(family, "ShareRowExclusiveLock"),
        }
        assert outcomes["02-change_key_type-fk-attach"] == "applied"
    else:
        assert seen["leaves"] == 0, "18 and later: the twin goes on the partitioned table itself"
        assert seen["attach locks"] == {}, "nothing to attach, no lock taken"
        assert outcomes["02-change_key_type-fk-attach"] == "skipped"
    # Each index twinned on the partitioned table the way PostgreSQL allows (ON ONLY, each
    # partition CONCURRENTLY, ATTACH): for each of the two holders' indexes, ON ONLY on the 2
    # partitioned tables, a build on each of the 3 leaves, an attach of each of the 4 partitions;
    # each a step in the ledger.
    pieces = scalar(
        dsn,
        "SELECT count(DISTINCT step_key) FROM zdm.step_attempts"
        " WHERE step_key ~ '^0[23]-change_key_type-index-twins:' AND outcome = 'applied'",
    )
    assert pieces == 2 * (2 + 3 + 4) - 1  # the first run's ON ONLY is there: not counted as done twice
    _visits_work(dsn, "after switch")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert check_change(conn, change) == []
    assert "failed" not in apply_phase(dsn, plan, "contract").values()
    _visits_work(dsn, "after contract", old_app=False)
    # Every foreign key and index of the tree, partitions' included, as it was and under its name,
    # on bigint columns of the same nullability.
    assert scalar(dsn, TREE_FKS) == fks
    assert scalar(dsn, TREE_INDEXES) == indexes
    assert scalar(dsn, TREE_COLUMNS) == "customer_id bigint not null, referrer_id bigint"
    for phase in ("expand", "migrate", "switch", "contract"):  # a re-run (a fleet's) changes nothing
        assert set(apply_phase(dsn, plan, phase).values()) == {"skipped"}, phase
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT setval('customers_id_seq', 3000000000)")
    assert _visits_work(dsn, "past the int range", old_app=False) > 2**31

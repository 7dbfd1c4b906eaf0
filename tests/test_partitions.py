"""Partitioned tables (where the large tables live), on real servers (18, and 15): an index built
without blocking writes (ON ONLY the parent, each partition CONCURRENTLY, ATTACH), a partition
attached between phases picked up by a re-run, and what PostgreSQL cannot do refused up front."""

from __future__ import annotations

import psycopg
import pytest

from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.catalog import check_change
from zdm_runbook.spec.change import parse_change

from .helpers import apply_phase, scalar

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY);
INSERT INTO customers SELECT generate_series(1, 100);
CREATE TABLE events (id int NOT NULL, at date NOT NULL, kind text NOT NULL, customer_id int,
    PRIMARY KEY (id, at, kind)) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
    PARTITION BY LIST (kind);
CREATE TABLE events_2025_a PARTITION OF events_2025 FOR VALUES IN ('a');
CREATE TABLE events_2025_rest PARTITION OF events_2025 DEFAULT;
INSERT INTO events SELECT g, DATE '2024-01-01' + (g % 700), (ARRAY['a', 'b'])[1 + g % 2], 1 + g % 100
    FROM generate_series(1, 20000) g;
"""
SPEC = """
change: events-kind
operations:
  - create_index: {table: events, name: events_kind_idx, columns: [kind]}
  - create_index: {table: events, name: events_id_at_kind_key, columns: [id, at, kind], unique: true}
  - add_column: {table: events, column: source, type: text}
  - backfill: {table: events, set: {source: "'web'"}}
  - set_not_null: {table: events, column: source}
"""


@pytest.fixture
def events(any_pg_db: str) -> str:
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
    return any_pg_db


def _pieces(dsn: str, outcome: str) -> set[str]:
    """The partition pieces of the first index's step that the ledger records with ``outcome``."""
    rows = (
        psycopg.connect(dsn, autocommit=True)
        .execute(
            "SELECT DISTINCT step_key FROM zdm.step_attempts WHERE step_key LIKE '01-create_index-create:%%'"
            " AND outcome = %s",
            [outcome],
        )
        .fetchall()
    )
    return {str(r[0]) for r in rows}


def _indexes(dsn: str) -> dict[str, tuple[bool, str | None]]:
    """Every index named like ours: (valid, the index it is attached to)."""
    rows = (
        psycopg.connect(dsn, autocommit=True)
        .execute(
            "SELECT c.relname, i.indisvalid, p.inhparent::regclass::text FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid LEFT JOIN pg_inherits p ON p.inhrelid = i.indexrelid"
            " WHERE c.relname LIKE '%%kind%%' ORDER BY 1"
        )
        .fetchall()
    )
    return {str(name): (bool(valid), parent) for name, valid, parent in rows}


def test_an_index_on_a_partitioned_table_is_built_without_blocking_writes(events: str) -> None:
    plan = build_plan(parse_change(SPEC))
    with psycopg.connect(events, autocommit=True) as conn:
        assert check_change(conn, plan.change) == []
    expand = apply_phase(events, plan, "expand")
    assert expand["01-create_index-create"] == "applied"
    # ON ONLY each partitioned table, CONCURRENTLY each leaf, each attached: every piece a step of
    # its own in the ledger.
    assert _pieces(events, "applied") == {
        "01-create_index-create:events",
        "01-create_index-create:events_2024",
        "01-create_index-create:events_2024:attach",
        "01-create_index-create:events_2025",
        "01-create_index-create:events_2025_a",
        "01-create_index-create:events_2025_a:attach",
        "01-create_index-create:events_2025_rest",
        "01-create_index-create:events_2025_rest:attach",
        "01-create_index-create:events_2025:attach",
    }
    found = _indexes(events)
    assert all(valid for valid, _ in found.values()), found
    assert found["events_kind_idx"] == (True, None)
    assert found["events_2025_a_events_kind_idx_part"] == (True, "events_2025_events_kind_idx_part")
    assert found["events_2025_events_kind_idx_part"] == (True, "events_kind_idx")
    # The unique one enforces uniqueness across the tree.
    with psycopg.connect(events, autocommit=True) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO events VALUES (1, DATE '2024-01-02', 'b', 1)")
    for phase in ("migrate", "switch"):
        apply_phase(events, plan, phase)
    assert scalar(events, "SELECT count(*) FROM events WHERE source IS NULL") == 0
    assert set(apply_phase(events, plan, "expand").values()) == {"skipped"}


def test_a_partition_attached_or_detached_between_phases_is_handled(events: str) -> None:
    plan = build_plan(parse_change(SPEC))
    apply_phase(events, plan, "expand")
    with psycopg.connect(events, autocommit=True) as conn:
        conn.execute("CREATE TABLE events_2026 (LIKE events INCLUDING DEFAULTS)")
        conn.execute("INSERT INTO events_2026 VALUES (1, DATE '2026-03-01', 'a', 1)")
        conn.execute(
            "ALTER TABLE events ATTACH PARTITION events_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
        )
        conn.execute("ALTER TABLE events DETACH PARTITION events_2024")
    found = _indexes(events)
    # PostgreSQL's ATTACH builds the parent's indexes on the new partition itself (under the
    # attach's own lock, which the DBA chose to take); DETACH leaves the partition its index.
    assert found["events_kind_idx"] == (True, None)
    attached = [name for name, (valid, parent) in found.items() if parent == "events_kind_idx" and valid]
    assert any(name.startswith("events_2026") for name in attached), found
    assert found["events_2024_events_kind_idx_part"] == (True, None)
    again = apply_phase(events, plan, "expand")
    assert set(again.values()) == {"skipped"}, again
    for phase in ("migrate", "switch"):
        apply_phase(events, plan, phase)
    assert scalar(events, "SELECT count(*) FROM events WHERE source IS NULL") == 0


@pytest.mark.parametrize(
    ("op", "problem"),
    [
        (
            "add_unique: {table: events, name: events_u, columns: [id, at, kind]}",
            "PostgreSQL cannot add a constraint USING INDEX to a partitioned table",
        ),
        (
            "add_primary_key: {table: events, name: events_pk2, columns: [id, at]}",
            "PostgreSQL cannot add a constraint USING INDEX to a partitioned table",
        ),
    ],
)
def test_what_postgresql_cannot_do_on_a_partitioned_table_is_refused(
    events: str, op: str, problem: str
) -> None:
    with psycopg.connect(events, autocommit=True) as conn:
        found = [str(p) for p in check_change(conn, parse_change(f"change: x\noperations:\n  - {op}\n"))]
    assert any(problem in f for f in found), found


@pytest.mark.pg("< 18")
def test_a_not_valid_foreign_key_on_a_partitioned_table_is_refused_before_18(events: str) -> None:
    op = "add_foreign_key: {table: events, name: events_fk, columns: [customer_id], references: {table: customers, columns: [id]}}"
    with psycopg.connect(events, autocommit=True) as conn:
        (problem,) = check_change(conn, parse_change(f"change: x\noperations:\n  - {op}\n"))
    assert "PostgreSQL before 18 cannot add a foreign key to it NOT VALID" in problem.message


@pytest.mark.pg(">= 18")
def test_a_foreign_key_on_a_partitioned_table_works_from_18(events: str) -> None:
    op = "add_foreign_key: {table: events, name: events_fk, columns: [customer_id], references: {table: customers, columns: [id]}}"
    plan = build_plan(parse_change(f"change: x\noperations:\n  - {op}\n"))
    with psycopg.connect(events, autocommit=True) as conn:
        assert check_change(conn, plan.change) == []
    for phase in ("expand", "migrate", "switch"):
        apply_phase(events, plan, phase)
    assert (
        scalar(
            events,
            "SELECT convalidated FROM pg_constraint WHERE conname = 'events_fk' AND conrelid = 'events'::regclass",
        )
        is True
    )


# Measured on 15 and 18: these need nothing special on a partitioned table. (drop_not_null is not
# here: every NOT NULL column of this table is in its key; tests/test_alterations.py covers it.)
EVERY_OP = {
    "add_column": "add_column: {table: events, column: extra, type: text}",
    "add_column with a default": "add_column: {table: events, column: extra, type: int, default: '0'}",
    "add_check": "add_check: {table: events, name: events_customer_positive, expression: 'customer_id > 0'}",
    "set_not_null": "set_not_null: {table: events, column: customer_id}",
    "backfill": "backfill: {table: events, set: {customer_id: 'coalesce(customer_id, 1)'}}",
    "set_default": "set_default: {table: events, column: customer_id, default: '1'}",
    "rename_column": "rename_column: {table: events, from: customer_id, to: client_id, type: int}",
    "change_type": "change_type: {table: events, column: customer_id, new_column: customer_big, type: bigint,"
    " using: 'customer_id::bigint', reverse: 'customer_big::int'}",
    "add_not_null_column": "add_not_null_column: {table: events, column: src, type: text, backfill: \"'web'\", default: \"'web'\"}",
    "drop_column": "drop_column: {table: events, column: customer_id}",
    "set_comment": "set_comment: {table: events, comment: hi}",
    "set_replica_identity": "set_replica_identity: {table: events, identity: full}",
    "rename_table": "rename_table: {from: events, to: happenings}",
}


@pytest.mark.parametrize("name", sorted(EVERY_OP))
def test_every_other_operation_runs_its_four_phases_on_a_partitioned_table(events: str, name: str) -> None:
    plan = build_plan(parse_change(f"change: x\noperations:\n  - {EVERY_OP[name]}\n"))
    with psycopg.connect(events, autocommit=True) as conn:
        assert check_change(conn, plan.change) == []
    for phase in ("expand", "migrate", "switch", "contract"):
        apply_phase(events, plan, phase)
        assert set(apply_phase(events, plan, phase).values()) <= {"skipped"}, phase

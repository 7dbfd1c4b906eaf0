"""Every recipe applied phase by phase on a real server (18, and 15 where installed): after each
phase the schema is what the phase promises, and both the old app (N-1) and the new app (N) can
still write and read, with the dual-write trigger keeping both shapes equal, until contract."""

from __future__ import annotations

import psycopg
import pytest

from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import CHANGE_TYPE, ORDERS, RENAME, apply_phase, columns, scalar

ADD_NOT_NULL = """
change: orders-currency
operations:
  - add_not_null_column: {table: orders, column: currency, type: text, backfill: "'EUR'", default: "'EUR'"}
"""

ADD_NOT_NULL_NO_DEFAULT = """
change: orders-region
operations:
  - add_not_null_column: {table: orders, column: region, type: text,
                          backfill: "CASE WHEN customer_id % 2 = 0 THEN 'north' ELSE 'south' END"}
"""


def _setup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ORDERS)


def _run(dsn: str, spec: str, phase: Phase) -> dict[str, str]:
    plan = build_plan(parse_change(spec))
    first = apply_phase(dsn, plan, phase)
    again = apply_phase(dsn, plan, phase)
    assert set(again.values()) <= {"skipped"}, f"re-running {phase} must change nothing: {again}"
    return first


def _exec(dsn: str, query: str, params: object = None) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchone() if cur.description else None


def test_change_type_phase_by_phase(any_pg_db: str) -> None:
    dsn = any_pg_db
    _setup(dsn)
    mismatch = "SELECT count(*) FROM orders WHERE customer_ref IS DISTINCT FROM customer_id::bigint"

    applied = _run(dsn, CHANGE_TYPE, Phase.EXPAND)
    assert list(applied.values()) == ["applied", "applied"]
    assert columns(dsn, "orders")["customer_ref"] == ("bigint", False)
    # Old app writes only customer_id, new app only customer_ref: the trigger fills the other one.
    old_id = _exec(dsn, "INSERT INTO orders (customer_id, note) VALUES (7, 'old') RETURNING id")
    new_id = _exec(dsn, "INSERT INTO orders (customer_ref, note) VALUES (9, 'new') RETURNING id")
    assert _exec(dsn, "SELECT customer_id, customer_ref FROM orders WHERE id = %s", old_id) == (
        7,
        7,
    )
    assert _exec(dsn, "SELECT customer_id, customer_ref FROM orders WHERE id = %s", new_id) == (
        9,
        9,
    )
    _exec(dsn, "UPDATE orders SET customer_id = 11 WHERE id = %s", old_id)
    _exec(dsn, "UPDATE orders SET customer_ref = 12 WHERE id = %s", new_id)
    assert _exec(dsn, "SELECT customer_id, customer_ref FROM orders WHERE id = %s", old_id) == (
        11,
        11,
    )
    assert _exec(dsn, "SELECT customer_id, customer_ref FROM orders WHERE id = %s", new_id) == (
        12,
        12,
    )
    assert scalar(dsn, mismatch) == 500  # the old rows wait for the backfill

    _run(dsn, CHANGE_TYPE, Phase.MIGRATE)
    assert scalar(dsn, mismatch) == 0

    _run(dsn, CHANGE_TYPE, Phase.SWITCH)
    assert columns(dsn, "orders")["customer_ref"] == ("bigint", True)
    assert (
        scalar(
            dsn,
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype = 'c'",
        )
        == 0
    )
    # Both versions still work after switch: the old one writing customer_id only.
    _exec(dsn, "INSERT INTO orders (customer_id, note) VALUES (21, 'old after switch')")
    _exec(dsn, "INSERT INTO orders (customer_ref, note) VALUES (22, 'new after switch')")
    assert _exec(
        dsn,
        "SELECT array_agg(customer_ref ORDER BY customer_ref) FROM orders WHERE note LIKE '%after switch'",
    ) == ([21, 22],)
    assert scalar(dsn, mismatch) == 0

    _run(dsn, CHANGE_TYPE, Phase.CONTRACT)
    cols = columns(dsn, "orders")
    assert "customer_id" not in cols and cols["customer_ref"] == ("bigint", True)
    assert (
        scalar(
            dsn,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal",
        )
        == 0
    )
    assert scalar(dsn, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'zdm_%'") == 0
    _exec(dsn, "INSERT INTO orders (customer_ref, note) VALUES (31, 'new after contract')")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        _exec(dsn, "INSERT INTO orders (customer_id) VALUES (1)")  # N-1 is retired now
    assert scalar(dsn, "SELECT count(*) FROM orders") == 505


def test_change_type_lossy_reverse_never_rewrites_old_values(db: str) -> None:
    """numeric → int rounds; the backfill writing the rounded value must not round the original."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE prices (id int PRIMARY KEY, amount numeric)")
        conn.execute("INSERT INTO prices VALUES (1, 10.4), (2, 10.6)")
    spec = """
change: prices-int
operations:
  - change_type: {table: prices, column: amount, new_column: amount_int, type: int,
                  using: "round(amount)::int", reverse: "amount_int::numeric"}
"""
    for phase in (Phase.EXPAND, Phase.MIGRATE):
        _run(db, spec, phase)
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT amount, amount_int FROM prices ORDER BY id").fetchall()
    assert [(str(a), b) for a, b in rows] == [("10.4", 10), ("10.6", 11)]


def test_rename_column_phase_by_phase(any_pg_db: str) -> None:
    dsn = any_pg_db
    _setup(dsn)
    _run(dsn, RENAME, Phase.EXPAND)
    old_id = _exec(dsn, "INSERT INTO orders (customer_id, note) VALUES (1, 'from old') RETURNING id")
    new_id = _exec(dsn, "INSERT INTO orders (customer_id, remark) VALUES (1, 'from new') RETURNING id")
    assert _exec(dsn, "SELECT note, remark FROM orders WHERE id = %s", old_id) == (
        "from old",
        "from old",
    )
    assert _exec(dsn, "SELECT note, remark FROM orders WHERE id = %s", new_id) == (
        "from new",
        "from new",
    )
    _exec(dsn, "UPDATE orders SET remark = NULL WHERE id = %s", new_id)  # new app clears its column
    assert _exec(dsn, "SELECT note, remark FROM orders WHERE id = %s", new_id) == (None, None)

    _run(dsn, RENAME, Phase.MIGRATE)
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE note IS DISTINCT FROM remark") == 0
    switched = _run(dsn, RENAME, Phase.SWITCH)
    # A rename has nothing to switch in the schema (the app moves its reads): note is nullable, so
    # the NOT NULL steps that follow the old column have nothing to do.
    assert set(switched.values()) == {"skipped"}
    assert columns(dsn, "orders")["remark"] == ("text", False)
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE note = 'n1' AND remark = 'n1'") == 1

    _run(dsn, RENAME, Phase.CONTRACT)
    assert "note" not in columns(dsn, "orders")
    assert scalar(dsn, "SELECT remark FROM orders WHERE id = %s", old_id) == "from old"


def test_add_not_null_column_with_default(any_pg_db: str) -> None:
    dsn = any_pg_db
    _setup(dsn)
    _run(dsn, ADD_NOT_NULL, Phase.EXPAND)
    assert columns(dsn, "orders")["currency"] == ("text", False)
    # Existing rows stay NULL until the backfill: the default only applies to new rows.
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE currency IS NULL") == 500
    _exec(dsn, "INSERT INTO orders (customer_id) VALUES (1)")  # old app: no currency
    _exec(dsn, "INSERT INTO orders (customer_id, currency) VALUES (1, 'USD')")  # new app
    _run(dsn, ADD_NOT_NULL, Phase.MIGRATE)
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE currency IS NULL") == 0
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE currency = 'USD'") == 1  # not overwritten

    _run(dsn, ADD_NOT_NULL, Phase.SWITCH)
    assert columns(dsn, "orders")["currency"] == ("text", True)
    _exec(dsn, "INSERT INTO orders (customer_id) VALUES (2)")  # the old app still works
    assert _run(dsn, ADD_NOT_NULL, Phase.CONTRACT) == {}
    checks = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype = 'c'"
    assert scalar(dsn, checks) == 0  # the temporary CHECK is gone once NOT NULL is set


def test_add_not_null_column_without_default_waits_for_contract(any_pg_db: str) -> None:
    dsn = any_pg_db
    _setup(dsn)
    plan = build_plan(parse_change(ADD_NOT_NULL_NO_DEFAULT))
    assert plan.for_phase(Phase.SWITCH) == ()
    assert len(plan.for_phase(Phase.CONTRACT)) == 3
    for phase in (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH):
        _run(dsn, ADD_NOT_NULL_NO_DEFAULT, phase)
        _exec(dsn, "INSERT INTO orders (customer_id) VALUES (4)")  # the old app keeps working
    _exec(dsn, "UPDATE orders SET region = 'east' WHERE region IS NULL")  # N writes it from now on
    _run(dsn, ADD_NOT_NULL_NO_DEFAULT, Phase.CONTRACT)
    assert columns(dsn, "orders")["region"] == ("text", True)
    # 250 seeded rows plus the one the old app inserted during expand, all filled by the backfill;
    # the two inserted after the backfill were written by N before contract.
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE region = 'north'") == 251
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE region = 'east'") == 2


def test_app_dual_write_mode_installs_no_trigger(db: str) -> None:
    _setup(db)
    spec = RENAME.replace("change: rename-note", "change: rename-note\ndual_write: app")
    plan = build_plan(parse_change(spec))
    assert [s.key for s in plan.for_phase(Phase.EXPAND)] == ["01-rename_column-add-column"]
    for phase in Phase:
        _run(db, spec, phase)
    assert "note" not in columns(db, "orders")
    assert scalar(db, "SELECT count(*) FROM orders WHERE remark LIKE 'n%'") == 500


CHANGE_TYPE_FOLLOWS = """
change: orders-customer-ref
operations:
  - change_type: {{table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int"{extra}}}
"""


@pytest.mark.parametrize(("extra", "not_null"), [("", True), (", not_null: false", False)])
def test_change_type_of_a_not_null_column_keeps_it_not_null_unless_told(
    any_pg_db: str, extra: str, not_null: bool
) -> None:
    dsn = any_pg_db
    _setup(dsn)
    spec = CHANGE_TYPE_FOLLOWS.format(extra=extra)
    assert columns(dsn, "orders")["customer_id"] == ("integer", True)
    for phase in (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH):
        _run(dsn, spec, phase)
    assert columns(dsn, "orders")["customer_ref"] == ("bigint", not_null)
    if not_null:  # the old app's INSERT still works; one leaving the column NULL never did
        _exec(dsn, "INSERT INTO orders (customer_id, note) VALUES (3, 'old app')")

"""Every primitive operation planned into its phase and applied on a real server."""

from __future__ import annotations

import psycopg
import pytest

from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import apply_phase, columns, scalar

SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id int PRIMARY KEY, email text);
CREATE TABLE shop.orders (id int PRIMARY KEY, customer_id int, total numeric, legacy text, old_flag bool);
CREATE INDEX orders_legacy_idx ON shop.orders (legacy);
ALTER TABLE shop.orders ADD CONSTRAINT orders_old_check CHECK (total >= -1000);
CREATE TABLE shop.scratch (id int);
INSERT INTO shop.customers SELECT g, 'c' || g || '@example.org' FROM generate_series(1, 20) g;
INSERT INTO shop.orders SELECT g, g % 20 + 1, g * 1.5, 'x', true FROM generate_series(1, 200) g;
"""

SPEC = """
change: shop-everything
description: one of each primitive
operations:
  - create_table:
      table: shop.events
      columns:
        - {name: id, type: bigint, not_null: true}
        - {name: kind, type: text, default: "'created'"}
      primary_key: [id]
  - add_column: {table: shop.orders, column: status, type: text, default: "'new'"}
  - add_column: {table: shop.orders, column: shipped_at, type: timestamptz}
  - create_index: {table: shop.orders, name: orders_status_idx, columns: [status], where: "status <> 'done'"}
  - create_index: {table: shop.customers, name: customers_email_lower_idx, expression: "lower(email)", method: btree}
  - backfill: {table: shop.orders, set: {shipped_at: "'2024-01-01'::timestamptz"}, where: "id % 2 = 0"}
  - add_check: {table: shop.orders, name: orders_total_positive, expression: "total > 0"}
  - add_foreign_key: {table: shop.orders, name: orders_customer_fk, columns: [customer_id],
                      references: {table: shop.customers, columns: [id]}, on_delete: restrict}
  - add_unique: {table: shop.customers, name: customers_email_key, columns: [email]}
  - set_not_null: {table: shop.orders, column: customer_id}
  - raw_sql: {phase: expand, reason: "comment for the DBA", sql: "COMMENT ON TABLE shop.orders IS 'orders'"}
  - drop_index: {schema: shop, name: orders_legacy_idx}
  - drop_constraint: {table: shop.orders, name: orders_old_check}
  - drop_column: {table: shop.orders, column: legacy}
  - drop_table: {table: shop.scratch}
"""


def test_each_primitive_lands_in_its_phase() -> None:
    plan = build_plan(parse_change(SPEC))
    phases = {s.key: s.phase.value for s in plan.steps}
    assert phases["01-create_table-create"] == "expand"
    assert phases["04-create_index-create"] == "expand"
    assert phases["06-backfill-backfill"] == "migrate"
    assert phases["07-add_check-add-not-valid"] == phases["07-add_check-validate"] == "switch"
    assert phases["09-add_unique-index"] == "switch"
    assert phases["10-set_not_null-set-not-null"] == "switch"
    assert {phases[k] for k in phases if k.startswith(("12", "13", "14", "15"))} == {"contract"}
    outside = {s.key for s in plan.steps if not s.transactional}
    assert outside == {
        "04-create_index-create",
        "05-create_index-create",
        "09-add_unique-index",
        "12-drop_index-drop",
    }
    for step in plan.steps:
        text = step.render()
        if "INDEX" in text and ("CREATE" in text or "DROP INDEX" in text):
            assert "CONCURRENTLY" in text, step.key
        if "ADD CONSTRAINT" in text and "USING INDEX" not in text:
            assert text.rstrip(";").endswith("NOT VALID"), step.key


def test_primitives_apply_phase_by_phase(any_pg_db: str) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    plan = build_plan(parse_change(SPEC))
    for phase in Phase:
        apply_phase(dsn, plan, phase)
        again = apply_phase(dsn, plan, phase)
        raw = {k for k in again if "raw_sql" in k}  # raw SQL has no guard; COMMENT ON is idempotent
        assert {v for k, v in again.items() if k not in raw} <= {"skipped"}, again

    orders = columns(dsn, "shop.orders")
    assert orders["customer_id"] == ("integer", True)
    assert orders["status"] == ("text", False)
    assert "legacy" not in orders
    assert scalar(dsn, "SELECT count(*) FROM shop.orders WHERE shipped_at IS NOT NULL") == 100
    assert scalar(dsn, "SELECT count(*) FROM shop.orders WHERE status = 'new'") == 200
    assert scalar(dsn, "SELECT to_regclass('shop.scratch')") is None
    assert scalar(dsn, "SELECT to_regclass('shop.orders_legacy_idx')") is None
    assert scalar(dsn, "SELECT count(*) FROM shop.events") == 0
    assert scalar(dsn, "SELECT obj_description('shop.orders'::regclass)") == "orders"
    constraints = dict(
        psycopg.connect(dsn)
        .execute(
            "SELECT conname, convalidated FROM pg_constraint WHERE connamespace = 'shop'::regnamespace"
            " AND contype IN ('c', 'f', 'u')"
        )
        .fetchall()
    )
    assert constraints == {
        "orders_total_positive": True,
        "orders_customer_fk": True,
        "customers_email_key": True,
    }
    invalid = "SELECT count(*) FROM pg_index WHERE NOT indisvalid"
    assert scalar(dsn, invalid) == 0
    with pytest.raises(psycopg.errors.CheckViolation):
        psycopg.connect(dsn, autocommit=True).execute(
            "INSERT INTO shop.orders (id, customer_id, total) VALUES (999, 1, -5)"
        )

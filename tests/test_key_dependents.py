"""change_key_type and the other objects that use the key: refused by the catalog check, by name,
before any statement runs; every index on it survives the change, twinned by switch itself (an
expression, a predicate, NULLS NOT DISTINCT included) or by the spec.

Labelled by measuring first: without the check, the swap left an index on ``(name, id)`` and one on
``(id % 10)`` on the old int column, and contract's DROP COLUMN took both along silently; a view
read the old column after the swap and made contract fail (18.6, ``key_dependents``)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.catalog import check_change
from zdm_runbook.spec.change import parse_change

from .helpers import apply_phase, scalar, zdm

SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, score int);
CREATE INDEX customers_name_id ON customers (name, id);
CREATE INDEX customers_bucket ON customers ((id % 10)) WHERE score > 0;
INSERT INTO customers (name, score) SELECT 'c' || g, g % 7 FROM generate_series(1, 500) g;
"""
KEY = "  - change_key_type: {table: customers, column: id}\n"
TWINS = (
    "  - create_index: {table: customers, name: customers_name_id_bigint, columns: [name, id_zdm]}\n"
    '  - create_index: {table: customers, name: customers_bucket_bigint, expression: "id_zdm % 10",'
    ' where: "score > 0"}\n'
)
INDEXES = (
    "SELECT string_agg(pg_get_indexdef(indexrelid), ' | ' ORDER BY indexrelid::regclass::text)"
    " FROM pg_index WHERE indrelid = 'customers'::regclass"
)


def test_what_else_uses_the_key_is_refused_by_name_before_anything_runs(
    any_pg_db: str, tmp_path: Path
) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
        conn.execute("CREATE VIEW recent AS SELECT id, name FROM customers WHERE id > 400")
        conn.execute("ALTER TABLE customers ADD CONSTRAINT customers_id_small CHECK (id < 1000000)")
        conn.execute("ALTER TABLE customers ADD CONSTRAINT customers_id_key UNIQUE (id)")  # a second key
        conn.execute("CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'")
        conn.execute(
            "CREATE TRIGGER audit_id BEFORE UPDATE OF id ON customers FOR EACH ROW EXECUTE FUNCTION noop()"
        )
        change = parse_change(f"change: c\noperations:\n{KEY}")
        problems = check_change(conn, change)
    said = {p.message.split(": after the swap")[0] for p in problems}
    assert said == {  # no index: switch twins each itself (index-twins), expressions and predicates too
        "public.customers.id is used by view recent",
        "public.customers.id is used by constraint customers_id_small on table customers",
        "public.customers.id is used by trigger audit_id on table customers",
        "public.customers.id is used by constraint customers_id_key on table customers",
    }
    assert all(p.path == "operations[0].change_key_type.column" for p in problems)
    assert all(
        p.message.endswith("drop it before the change and create it again after switch") for p in problems
    )
    # The user's path: zdm plan checks the catalog and exits 2, naming them; nothing was created.
    spec_file = tmp_path / "key.yaml"
    spec_file.write_text(f"change: c\noperations:\n{KEY}")
    out = zdm("plan", str(spec_file), "--dsn-env", "T", env={"T": dsn})
    assert out.returncode == 2 and "is used by view recent" in out.stderr, out.stderr
    assert (
        scalar(
            dsn,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'id_zdm'",
        )
        == 0
    )


def test_indexes_twinned_by_the_spec_survive_the_change_on_the_bigint_key(any_pg_db: str) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
    plan = build_plan(parse_change(f"change: c\noperations:\n{KEY}{TWINS}"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert check_change(conn, plan.change) == []
    for phase in ("expand", "migrate", "switch", "contract"):
        assert apply_phase(dsn, plan, phase), phase
        with psycopg.connect(dsn, autocommit=True) as conn:  # a re-run's check, after each phase
            assert check_change(conn, plan.change) == [], phase
    indexes = scalar(dsn, INDEXES)
    assert "ON public.customers USING btree (((id % (10)::bigint))) WHERE (score > 0)" in indexes
    assert "CREATE INDEX customers_name_id_bigint ON public.customers USING btree (name, id)" in indexes
    assert "customers_name_id " not in indexes and "customers_bucket " not in indexes  # the old ones, gone
    assert set(apply_phase(dsn, plan, "contract").values()) == {"skipped"}


OTHER_INDEXES = """
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers, deleted_at timestamptz, note text);
CREATE INDEX orders_live_customer ON orders (customer_id) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX orders_one_open ON orders (customer_id, (note IS NULL)) NULLS NOT DISTINCT
    WHERE deleted_at IS NULL AND customer_id > 0;
CREATE INDEX orders_customer_text ON orders ((customer_id::text) text_pattern_ops DESC) INCLUDE (note)
    WITH (fillfactor = 80);
INSERT INTO orders (customer_id, deleted_at) SELECT 1 + g % 500, CASE WHEN g > 500 THEN now() END
    FROM generate_series(1, 1000) g;
"""
ORDER_INDEXES = INDEXES.replace("'customers'::regclass", "'orders'::regclass")


def test_expression_and_partial_indexes_are_twinned_by_switch_itself(any_pg_db: str) -> None:
    """Without a spec line, every index on the key and on a column that holds it ends as it was,
    under its name, on the bigint column: an expression with its operator class and order, a
    predicate that names the column, NULLS NOT DISTINCT (15+), INCLUDE and storage parameters.
    Each was refused before switch twinned them (a soft-delete predicate on a foreign key column
    is common)."""
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
        conn.execute(OTHER_INDEXES.encode())
        change = parse_change(
            f"change: c\noperations:\n{KEY}  - change_key_type: {{table: orders, column: customer_id}}\n"
        )
        assert check_change(conn, change) == []
    before = (scalar(dsn, INDEXES), scalar(dsn, ORDER_INDEXES))
    plan = build_plan(change)
    for phase in ("expand", "migrate", "switch", "contract"):
        outcome = apply_phase(dsn, plan, phase)
        assert "failed" not in outcome.values(), (phase, outcome)
    # As they were; an expression reads as PostgreSQL makes it on a bigint column (its constant cast
    # to bigint, as for the same CREATE INDEX on a table made bigint), which queries on id % 10 use.
    widened = before[0].replace("((id % 10))", "((id % (10)::bigint))")
    assert (scalar(dsn, INDEXES), scalar(dsn, ORDER_INDEXES)) == (widened, before[1])
    types = (
        "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s"
    )
    assert (
        scalar(dsn, types, ["orders", "customer_id"]) == scalar(dsn, types, ["customers", "id"]) == "bigint"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:  # the partial unique index still says no
        conn.execute("SELECT setval('customers_id_seq', 3000000000)")
        (big,) = conn.execute("INSERT INTO customers (name) VALUES ('big') RETURNING id").fetchone() or (0,)
        conn.execute("INSERT INTO orders (customer_id) VALUES (%s)", [big])
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO orders (customer_id) VALUES (%s)", [big])
        conn.execute("SET enable_seqscan = off")
        for query, indexes in (
            ("SELECT id FROM customers WHERE id % 10 = 3 AND score > 0", ("customers_bucket",)),
            (  # both partial indexes fit it
                "SELECT id FROM orders WHERE customer_id = 7 AND deleted_at IS NULL",
                ("orders_live_customer", "orders_one_open"),
            ),
        ):
            explained = str(conn.execute(f"EXPLAIN {query}").fetchall())
            # an Index Scan "using" it, or a Bitmap Index Scan "on" it: the planner's choice by costs
            assert any(
                f"using {index} on" in explained or f"Index Scan on {index} " in explained
                for index in indexes
            ), (query, explained)

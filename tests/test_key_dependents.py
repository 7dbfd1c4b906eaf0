"""change_key_type and the other objects that use the key: refused by the catalog check, by name,
before any statement runs; an index twinned on the new column by the spec survives the change.

Labelled by measuring first: without the check, the swap left an index on ``(name, id)`` and one on
``(id % 10)`` on the old int column, and contract's DROP COLUMN took both along silently; a view
read the old column after the swap and made contract fail (18.6, ``key_dependents``)."""

from __future__ import annotations

from pathlib import Path

import psycopg

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
    assert said == {  # not customers_name_id, a plain index: switch twins it itself (index-twins)
        "public.customers.id is used by index customers_bucket",
        "public.customers.id is used by view recent",
        "public.customers.id is used by constraint customers_id_small on table customers",
        "public.customers.id is used by trigger audit_id on table customers",
        "public.customers.id is used by constraint customers_id_key on table customers",
    }
    assert all(p.path == "operations[0].change_key_type.column" for p in problems)
    expression = next(p.message for p in problems if "index customers_bucket:" in p.message)
    assert (
        "twin it on id_zdm in this spec, after this operation: a create_index whose expression" in expression
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

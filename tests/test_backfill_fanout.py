"""What each row a backfill updates sets off. The app's UPDATE triggers: said before the backfill,
measured to be true, and the two ways the warning names to keep a trigger out measured to work. A
publication of the table's updates: said (that each backfilled row reaches a logical slot as an
UPDATE was measured with test_decoding on 15, which needs wal_level = logical: inspect/backfill_fanout.py)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import psycopg
import pytest

from .helpers import plan_warnings, zdm

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, updated_at timestamptz NOT NULL DEFAULT '2020-01-01');
INSERT INTO orders (id, customer_id) SELECT g, g FROM generate_series(1, 3000) g;
CREATE TABLE orders_audit (id bigserial, order_id int);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN INSERT INTO orders_audit (order_id) VALUES (NEW.id); RETURN NULL; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TRIGGER orders_audit AFTER UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION audit();
CREATE TRIGGER orders_by_customer AFTER UPDATE OF customer_id ON orders FOR EACH ROW EXECUTE FUNCTION audit();
CREATE TRIGGER orders_off AFTER UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION audit();
ALTER TABLE orders DISABLE TRIGGER orders_off;
"""
SPEC = "change: {id}\noperations:\n  - add_not_null_column: {{table: orders, column: {column}, type: text, backfill: \"'EUR'\", default: \"'EUR'\"}}\n"


def _expand_and_migrate(spec: Path, archive: Path, env: dict[str, str]) -> None:
    for phase in ("expand", "migrate"):
        where = ("--dsn-env", "SHOP", "--archive", str(archive), "-p", "signoff_by", "dana")
        done = zdm("run", phase, str(spec), *where, env=env)
        assert done.returncode == 0, done.stdout[-2000:]


def _touched(db: str) -> tuple[int, int]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE updated_at > '2021-01-01'), (SELECT count(*) FROM orders_audit) FROM orders"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_the_triggers_a_backfill_fires_are_named_before_it_and_a_trigger_can_stay_out(
    db: str, tmp_path: Path
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
    env = {"SHOP": db}
    first = tmp_path / "first.yaml"
    first.write_text(SPEC.format(id="orders-currency", column="currency"))
    (warning,) = plan_warnings(first, db, "fire on every row the backfill updates")
    assert "orders_audit (AFTER UPDATE, audit()), orders_touch (BEFORE UPDATE, touch())" in warning
    assert "orders_by_customer" not in warning and "orders_off" not in warning  # other columns; disabled
    archive = tmp_path / "archive"
    _expand_and_migrate(first, archive, env)
    (migrate,) = archive.glob("orders-currency/migrate-*.ipynb")
    text = "\n".join(
        "".join(o.get("text", ""))
        for c in nbformat.read(migrate, as_version=4).cells
        for o in c.get("outputs", [])
    )
    assert "orders_touch (BEFORE UPDATE, touch())" in text  # said in migrate's preflight, before the pass
    assert _touched(db) == (3000, 3000)  # and true: every row's updated_at, an audit row per row

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(  # the reset is an update too: its triggers would see it
            "ALTER TABLE orders DISABLE TRIGGER USER; UPDATE orders SET updated_at = '2020-01-01';"
            " ALTER TABLE orders ENABLE TRIGGER USER; ALTER TABLE orders DISABLE TRIGGER orders_off;"
            " TRUNCATE orders_audit"
        )
        conn.execute(  # the two ways the warning names
            "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF current_setting('application_name') LIKE 'zdm_runbook%' THEN RETURN NEW; END IF;"
            " NEW.updated_at := now(); RETURN NEW; END $$;"
            " CREATE OR REPLACE TRIGGER orders_audit AFTER UPDATE ON orders FOR EACH ROW"
            " WHEN (current_setting('application_name') NOT LIKE 'zdm_runbook%') EXECUTE FUNCTION audit();"
        )
    second = tmp_path / "second.yaml"
    second.write_text(SPEC.format(id="orders-region", column="region"))
    planned = zdm("plan", str(second), "--dsn-env", "SHOP", env=env)
    assert "the backfill updates" not in planned.stderr  # dealt with: no warning
    _expand_and_migrate(second, archive, env)
    assert _touched(db) == (0, 0)
    with psycopg.connect(db, autocommit=True) as conn:  # the app's own updates still fire both
        conn.execute("UPDATE orders SET customer_id = 7 WHERE id = 1")
    assert _touched(db) == (1, 2)  # orders_audit and orders_by_customer


def test_a_publication_of_the_tables_updates_is_said_and_no_other(db: str, tmp_path: Path) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY);"
            " CREATE PUBLICATION inserts_only FOR TABLE orders WITH (publish = 'insert');"
            " CREATE PUBLICATION elsewhere FOR TABLE other;"
        )
        spec = tmp_path / "change.yaml"
        spec.write_text(SPEC.format(id="orders-currency", column="currency"))
        quiet = zdm("plan", str(spec), "--dsn-env", "SHOP", env={"SHOP": db})
        assert quiet.returncode == 0 and "published for UPDATE" not in quiet.stderr, quiet.stderr
        # Its inserts carry the new column all the same: what a subscriber needs is said apart
        # (tests/test_publications.py), and of this publication only.
        assert "is published (inserts_only;" in quiet.stderr and "elsewhere" not in quiet.stderr
        conn.execute("CREATE PUBLICATION cdc FOR TABLE orders")
        said = zdm("plan", str(spec), "--dsn-env", "SHOP", env={"SHOP": db})
    (warning,) = [line for line in said.stderr.splitlines() if "published for UPDATE" in line]
    assert warning.startswith("[warn] public.orders is published for UPDATE (cdc; 0 logical slot(s)")
    assert "every row the backfill updates goes to the subscribers" in warning

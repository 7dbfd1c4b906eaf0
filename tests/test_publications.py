"""What a change's DDL does to a real subscriber of a table it alters (inspect/publications.py):
said by ``zdm plan --dsn-env`` before anything runs, and measured to be true. A throw-away server
with ``wal_level = logical``; the app's database publishes ``orders``, and a second database of the
same server subscribes to it (the slot made first: a subscription to its own server cannot make it)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import CHANGE_TYPE, ORDERS, apply_phase, plan_warnings, zdm
from .sessions import wait_for

pytestmark = pytest.mark.pg


@pytest.fixture
def publisher_and_subscriber() -> Iterator[tuple[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="zdm-logical-"))
    root.chmod(0o755)
    server = LocalServer(root / "data", embedded_bin_dir())
    try:
        with psycopg.connect(server.start(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_level = logical")
        server.stop()
        with psycopg.connect(server.start(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
            conn.execute("CREATE DATABASE copy")
        app, copy = server.dsn("app"), server.dsn("copy")
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute(ORDERS)
            conn.execute("CREATE PUBLICATION cdc FOR TABLE orders")
            conn.execute("SELECT pg_create_logical_replication_slot('copy', 'pgoutput')")
        with psycopg.connect(copy, autocommit=True) as conn:
            conn.execute(ORDERS.split("INSERT")[0])
            conn.execute(
                f"CREATE SUBSCRIPTION copy CONNECTION '{app}' PUBLICATION cdc"
                " WITH (create_slot = false, slot_name = 'copy')"
            )
        assert wait_for(lambda: _rows(copy) == 500, timeout=30)
        yield app, copy
    finally:
        try:
            with psycopg.connect(server.dsn("copy"), autocommit=True) as conn:
                conn.execute("DROP SUBSCRIPTION IF EXISTS copy")
        except psycopg.Error:
            pass
        server.destroy()


def _rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
    return int(row[0]) if row else 0


def test_a_published_tables_new_column_is_said_before_and_stops_a_subscriber_that_lacks_it(
    publisher_and_subscriber: tuple[str, str], tmp_path: Path
) -> None:
    app, copy = publisher_and_subscriber
    spec = tmp_path / "spec.yaml"
    spec.write_text(CHANGE_TYPE)
    (warning,) = plan_warnings(spec, app, "logical replication carries no DDL")
    assert warning.startswith("[warn] public.orders is published (cdc; 1 logical slot(s) on this database)")
    assert "before the phase named: column customer_ref (expand)" in warning

    apply_phase(app, build_plan(parse_change(CHANGE_TYPE)), Phase.EXPAND)
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (customer_id) VALUES (7)")
    assert not wait_for(lambda: _rows(copy) == 501, timeout=3)  # the subscriber stopped at it
    with psycopg.connect(copy, autocommit=True) as conn:  # as the warning says: the column first
        conn.execute("ALTER TABLE orders ADD COLUMN customer_ref bigint")
    assert wait_for(lambda: _rows(copy) == 501, timeout=30)  # then it catches up


def test_a_first_run_that_would_publish_the_ledger_to_a_slot_is_refused_before_it_creates_it(
    publisher_and_subscriber: tuple[str, str], tmp_path: Path
) -> None:
    app, _ = publisher_and_subscriber
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION everything FOR ALL TABLES")
    spec = tmp_path / "spec.yaml"
    spec.write_text(CHANGE_TYPE)
    where = ("--dsn-env", "APP", "--archive", str(tmp_path / "archive"), "-p", "signoff_by", "dana")
    refused = zdm("run", "expand", str(spec), *where, env={"APP": app})
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    said = refused.stdout + refused.stderr
    assert "publication everything publishes FOR ALL TABLES, and 1 logical slot(s) read this database" in said
    assert "Nothing was created" in said and "-p ledger_published true" in said
    with psycopg.connect(app) as conn:
        assert conn.execute("SELECT to_regnamespace('zdm') IS NULL").fetchone() == (True,)
    done = zdm("run", "expand", str(spec), *where, "-p", "ledger_published", "true", env={"APP": app})
    assert done.returncode == 0, done.stdout[-2000:]
    again = zdm("run", "migrate", str(spec), *where, env={"APP": app})  # the ledger exists: not asked
    assert again.returncode == 0, again.stdout[-2000:]

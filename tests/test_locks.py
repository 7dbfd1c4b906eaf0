"""Lock inspection on a real blocking chain: a holder, a DDL queued behind it, an app queued behind that."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from zdm_runbook.inspect import locks
from zdm_runbook.inspect.preflight import preflight
from zdm_runbook.spec.model import Table

from .sessions import Background, Blocker, is_waiting, wait_for
from .test_cli import zdm

pytestmark = pytest.mark.pg


@pytest.fixture
def chain(db: str) -> Iterator[tuple[str, int, int, int]]:
    """billing holds AccessShareLock on orders; deploy's ALTER waits for it; app's SELECT waits for deploy."""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1)")
    blocker = Blocker(db, "SELECT count(*) FROM orders", app="billing")
    ddl = Background(db, "ALTER TABLE orders ADD COLUMN note text", app="deploy")
    assert wait_for(lambda: is_waiting(db, ddl.pid))
    app = Background(db, "SELECT count(*) FROM orders", app="app")
    assert wait_for(lambda: is_waiting(db, app.pid))
    try:
        yield db, blocker.pid, ddl.pid, app.pid
    finally:
        blocker.release()
        ddl.join()
        app.join()
    assert ddl.error is None and app.error is None


def test_blocking_tree_shows_the_chain_root_first(chain: tuple[str, int, int, int]) -> None:
    db, holder, ddl, app = chain
    with psycopg.connect(db, autocommit=True) as c:
        tree = locks.blocking_tree(c)
    assert list(tree.pid) == [holder, ddl, app]
    assert list(tree.depth) == [0, 1, 2]
    assert set(tree.root) == {holder}
    assert list(tree.blocked_by) == [[], [holder], [ddl]]
    assert tree.waits_for[1] == "AccessExclusiveLock on orders"
    assert tree.waits_for[2] == "AccessShareLock on orders"
    assert tree.tree[0].startswith(f"{holder} (billing) idle in transaction")
    assert tree.tree[2].startswith(f"   └─ {app} (app) active")


def test_waiting_sessions_and_table_locks(chain: tuple[str, int, int, int]) -> None:
    db, holder, ddl, app = chain
    with psycopg.connect(db, autocommit=True) as c:
        waiting = locks.waiting_sessions(c)
        held = locks.table_locks(c, ["orders"])
        old = locks.long_running(c, threshold_s=0.0)
    assert set(waiting.pid) == {ddl, app}
    assert all(w >= 0 for w in waiting.wait_s)
    rows = {(r["pid"], r["mode"], r["granted"]) for r in held.to_dict("records")}
    assert rows == {
        (holder, "AccessShareLock", True),
        (ddl, "AccessExclusiveLock", False),
        (app, "AccessShareLock", False),
    }
    assert held.granted.iloc[0]  # holders first
    assert holder in set(old.pid)
    assert old[old.pid == holder].state.item() == "idle in transaction"


def test_preflight_says_no_go_naming_the_holder(chain: tuple[str, int, int, int]) -> None:
    db, holder, ddl, _ = chain
    with psycopg.connect(db, autocommit=True) as c:
        verdict = preflight(c, ["orders"], long_after_s=0.0)
    assert not verdict.go
    text = str(verdict)
    assert text.startswith("NO-GO")
    assert f"pid {holder} (billing) idle in transaction" in text
    assert "holds AccessShareLock on orders: a DDL would queue behind it" in text
    assert f"pg_terminate_backend({holder})" in text
    assert f"a lock queue already exists on orders: pid {ddl} (deploy)" in text
    assert verdict.to_dict()["go"] is False


def test_preflight_goes_on_a_quiet_table_and_tolerates_missing_ones(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE quiet (id int)")
        verdict = preflight(c, ["quiet", "public.not_yet"])
    assert verdict.go
    assert [r.level for r in verdict.reasons] == ["info"]
    assert "public.not_yet does not exist" in verdict.reasons[0].text


def test_preflight_warns_about_an_old_transaction_elsewhere(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE a (id int); CREATE TABLE b (id int)")
    with (
        Blocker(db, "SELECT count(*) FROM b", app="reports") as other,
        psycopg.connect(db, autocommit=True) as c,
    ):
        assert wait_for(lambda: locks.long_running(c, 0.2).shape[0] > 0)
        verdict = preflight(c, ["a"], long_after_s=0.2)
    assert verdict.go
    assert any(r.level == "warn" and f"pid {other.pid} (reports)" in r.text for r in verdict.reasons)


def test_views_are_empty_when_nobody_waits(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as c:
        assert locks.blocking_tree(c).empty
        assert locks.waiting_sessions(c).empty
        assert list(locks.autovacuum(c).columns)[:3] == ["pid", "table", "phase"]
        assert locks.replication_lag(c).empty


def test_zdm_locks_prints_the_chain_and_exits_3_on_no_go(chain: tuple[str, int, int, int]) -> None:
    db, holder, ddl, app = chain
    done = zdm("locks", "orders", "--long-after", "0s", env={"ZDM_DSN": db})
    assert done.returncode == 2, done.stderr  # zero would mean wait forever: refused
    assert "--long-after" in done.stderr
    done = zdm("locks", "orders", "--long-after", "1ms", env={"ZDM_DSN": db})
    assert done.returncode == 3, done.stderr
    out = done.stdout
    assert f"{holder} (billing) idle in transaction" in out
    assert f"└─ {ddl} (deploy) active" in out
    assert "ALTER TABLE orders ADD COLUMN note text" in out
    assert f"└─ {app} (app) active" in out
    assert "NO-GO" in out
    assert out.index(str(holder)) < out.index(str(ddl)) < out.index(str(app))
    as_json = zdm("locks", "orders", "--json", "--long-after", "1ms", env={"ZDM_DSN": db})
    assert as_json.returncode == 3
    data = json.loads(as_json.stdout)
    assert [r["pid"] for r in data["blocking_tree"]] == [holder, ddl, app]
    assert data["verdict"]["go"] is False


def test_zdm_locks_without_tables_exits_0(db: str) -> None:
    done = zdm("locks", env={"ZDM_DSN": db})
    assert done.returncode == 0, done.stderr
    assert "nobody waits for a lock" in done.stdout
    assert "GO" not in done.stdout.split("== replicas")[1]


def test_a_table_name_is_found_as_sql_reads_it_and_as_the_spec_writes_it(db: str) -> None:
    """``zdm locks Billing.Invoice``: SQL would read billing.invoice; the spec's way of writing the
    table ("Billing"."Invoice") is tried when SQL's reading names nothing. Where both exist, SQL's wins."""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(
            'CREATE SCHEMA "Billing"; CREATE TABLE "Billing"."Invoice" (id int); CREATE TABLE "Orders" (id int)'
        )
        exact = locks.resolve_tables(
            c, ["Billing.Invoice", '"Billing"."Invoice"', Table("Billing", "Invoice")]
        )
        assert set(exact) == {'"Billing"."Invoice"'} and None not in exact.values()
        assert list(locks.resolve_tables(c, ["Orders"])) == ['"Orders"']
        c.execute("CREATE TABLE orders (id int)")
        assert list(locks.resolve_tables(c, ["Orders"])) == ["orders"]
        assert list(locks.resolve_tables(c, [Table("public", "Orders")])) == ['"Orders"']
        assert locks.resolve_tables(c, ["billing.nothing"]) == {"billing.nothing": None}


def test_a_serializable_readers_predicate_locks_are_no_holder(db: str) -> None:
    """SIReadLock (SERIALIZABLE's predicate locks) conflicts with nothing: the reader's
    AccessShareLock is what a DDL waits for, and the only lock named."""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1)")
    serializable = "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
    with (
        Blocker(db, serializable, "SELECT count(*) FROM orders", app="report") as reader,
        psycopg.connect(db, autocommit=True) as c,
    ):
        modes = {r[0] for r in c.execute("SELECT mode FROM pg_locks WHERE pid = %s", [reader.pid])}
        assert "SIReadLock" in modes  # there, in pg_locks
        verdict = preflight(c, ["orders"], long_after_s=0.0)
        held = locks.table_locks(c, ["orders"])
    assert set(held["mode"]) == {"AccessShareLock"}
    assert "SIReadLock" not in str(verdict)
    assert "holds AccessShareLock on orders" in str(verdict)

"""The dual-write triggers call their function only where it changes a row: counted by the server
itself (``track_functions``, read in the same transaction from ``pg_stat_xact_user_functions``),
on 18 and on 15. The app's writes to other columns and the backfill's own writes never call it;
writes to either synced column still do, and are still kept in sync both ways."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from zdm_runbook.plan.planner import build_plan
from zdm_runbook.plan.steps import Step
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import CHANGE_TYPE, ORDERS, RENAME, apply_phase, scalar

KEY = """
change: orders-id-bigint
operations:
  - change_key_type: {table: items, column: id}
"""


def _backfill(spec: str) -> Step:
    return next(s for s in build_plan(parse_change(spec)).steps if s.backfill is not None)


class Calls:
    """The sync function's calls in one open transaction, as the server counts them."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.execute("SET track_functions = 'pl'")

    def __call__(self) -> int:
        row = self.conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions WHERE funcname LIKE 'zdm%%'"
        ).fetchone()
        return int(row[0]) if row else -1

    def run(self, query: Any) -> int:
        return self.conn.execute(query).rowcount


@pytest.mark.parametrize(
    ("spec", "old", "new", "old_value", "new_value"),
    [(CHANGE_TYPE, "customer_id", "customer_ref", "7", "8"), (RENAME, "note", "remark", "'a'", "'b'")],
    ids=["change_type", "rename_column"],
)
def test_only_writes_to_a_synced_column_call_the_function(
    any_pg_db: str, spec: str, old: str, new: str, old_value: str, new_value: str
) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(ORDERS)
    apply_phase(dsn, build_plan(parse_change(spec)), Phase.EXPAND)
    backfill = _backfill(spec)
    with psycopg.connect(dsn) as conn:
        calls = Calls(conn)
        assert calls.run("UPDATE orders SET customer_id = customer_id") == 500  # a column written, unchanged
        assert calls() == 0
        conn.execute("SET application_name = 'zdm_runbook:migrate'")  # as the engine connects
        for statement in backfill.statements:  # the backfill's own UPDATE, over the whole table
            assert calls.run(statement) == 500
        assert calls() == 0, "the backfill's writes must not call the sync function"
        conn.execute("RESET application_name")
        other = "note = note || '!'" if old != "note" else "customer_id = customer_id + 1"
        assert calls.run(f"UPDATE orders SET {other}") == 500
        assert calls() == 0, "an app's write to another column must not call the sync function"
        calls.run(f"UPDATE orders SET {old} = {old_value} WHERE id = 1")  # the old app
        calls.run(f"UPDATE orders SET {new} = {new_value} WHERE id = 2")  # the new app
        insert = (
            f"({old}) VALUES ({old_value})"
            if old == "customer_id"
            else f"(customer_id, {old}) VALUES (1, {old_value})"
        )
        calls.run(f"INSERT INTO orders {insert}")
        assert calls() == 3
        rows = conn.execute(f"SELECT id, {old}::text, {new}::text FROM orders WHERE id IN (1, 2) ORDER BY id")
        assert rows.fetchall() == [
            (1, old_value.strip("'"), old_value.strip("'")),
            (2, new_value.strip("'"), new_value.strip("'")),
        ]
        mismatched = conn.execute(
            f"SELECT count(*) FROM orders WHERE {new}::text IS DISTINCT FROM {old}::text"
        )
        assert mismatched.fetchone() == (0,)


def test_an_earlier_single_trigger_is_replaced_when_expand_runs_again(db: str) -> None:
    """A change expanded by an earlier version has one ``INSERT OR UPDATE`` trigger under the
    UPDATE trigger's name: expand replaces it, and the backfill then calls nothing."""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(ORDERS)
    plan = build_plan(parse_change(CHANGE_TYPE))
    apply_phase(db, plan, Phase.EXPAND)
    with psycopg.connect(db, autocommit=True) as c:
        name, function = c.execute(
            "SELECT tgname, tgfoid::regproc::text FROM pg_trigger WHERE tgrelid = 'orders'::regclass"
            " AND tgtype & 16 <> 0"  # the UPDATE trigger
        ).fetchone() or ("", "")
        c.execute(f"DROP TRIGGER {name}_insert ON orders")
        c.execute(
            f"CREATE OR REPLACE TRIGGER {name} BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION {function}()"
        )
    assert apply_phase(db, plan, Phase.EXPAND)["01-change_type-dual-write"] == "applied"
    definitions = scalar(
        db,
        "SELECT string_agg(pg_get_triggerdef(oid), ' | ' ORDER BY tgname) FROM pg_trigger"
        " WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal",
    )
    assert "BEFORE UPDATE ON public.orders FOR EACH ROW WHEN" in definitions
    assert "BEFORE INSERT ON public.orders FOR EACH ROW EXECUTE" in definitions
    with psycopg.connect(db, application_name="zdm_runbook:migrate") as conn:  # as the engine
        calls = Calls(conn)
        for statement in _backfill(CHANGE_TYPE).statements:
            assert calls.run(statement) == 500
        assert calls() == 0


def test_after_the_key_swap_the_trigger_fires_where_the_key_is_written(any_pg_db: str) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        c.execute("INSERT INTO items SELECT g, 'i' || g FROM generate_series(1, 300) g")
    plan = build_plan(parse_change(KEY))
    for phase in (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH):
        apply_phase(dsn, plan, phase)
    definition = scalar(
        dsn,
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'items'::regclass AND tgtype & 16 <> 0",
    )
    assert "WHEN ((new.id IS DISTINCT FROM old.id))" in definition
    with psycopg.connect(dsn) as conn:
        calls = Calls(conn)
        assert calls.run("UPDATE items SET label = label || '!'") == 300
        assert calls() == 0
        calls.run("UPDATE items SET id = 3000000000 WHERE id = 1")  # past int: the shadow goes NULL
        calls.run("UPDATE items SET id = 1000 WHERE id = 2")
        calls.run("INSERT INTO items (id, label) VALUES (5000, 'new')")
        assert calls() == 3
        shadow = conn.execute(
            "SELECT string_agg(a.attname, ',') FROM pg_attribute a WHERE a.attrelid = 'items'::regclass"
            " AND a.attnum > 0 AND NOT a.attisdropped AND a.attname NOT IN ('id', 'label')"
        ).fetchone()
        assert shadow is not None
        rows = conn.execute(
            f"SELECT id, {shadow[0]} FROM items WHERE id IN (3000000000, 1000, 5000) ORDER BY id"
        ).fetchall()
        assert rows == [(1000, 1000), (5000, 5000), (3000000000, None)]


TIMESTAMPS = """
change: events-at-timestamptz
operations:
  - change_type: {table: events, column: at, new_column: at_tz, type: timestamptz,
                  using: "at::timestamptz", reverse: "at_tz::timestamp"}
"""


def test_a_conversion_is_computed_alike_by_the_trigger_in_any_session_and_by_the_backfill(
    any_pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``at::timestamptz`` reads the session's TimeZone. Measured before the pins: an app session in
    New York had the trigger store 13:00 UTC for 09:00, the backfill (UTC) stored 09:00 UTC, and
    migrate and switch went through with both. Now all follow the session that ran expand."""
    with psycopg.connect(any_pg_db, autocommit=True) as c:
        c.execute(
            "CREATE TABLE events (id serial PRIMARY KEY, at timestamp NOT NULL);"
            " INSERT INTO events (at) SELECT timestamp '2026-01-01 12:00' + g * interval '1 minute'"
            " FROM generate_series(1, 2000) g"
        )
    plan = build_plan(parse_change(TIMESTAMPS))
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")  # the DBA's session, where expand runs
    apply_phase(any_pg_db, plan, Phase.EXPAND)
    app = "SET TimeZone = 'America/New_York'; "
    with psycopg.connect(any_pg_db, autocommit=True) as c:  # the app, in its own zone, both ways
        c.execute(
            app
            + "INSERT INTO events (at) VALUES ('2026-06-01 09:00'); UPDATE events SET at = at + '1h' WHERE id = 5"
        )
    monkeypatch.setenv("PGTZ", "UTC")  # migrate from another machine
    apply_phase(any_pg_db, plan, Phase.MIGRATE)
    with psycopg.connect(any_pg_db, autocommit=True) as c:
        c.execute(
            app
            + "INSERT INTO events (at) VALUES ('2026-07-01 09:00'); UPDATE events SET at = at + '1h' WHERE id = 6"
        )
        c.execute(app + "UPDATE events SET at_tz = at_tz + '1h' WHERE id = 7")  # the new app's write
        off = c.execute(
            "SELECT count(*) FROM events WHERE at_tz IS DISTINCT FROM (at AT TIME ZONE 'Asia/Tokyo')"
        ).fetchone()
        config = c.execute("SELECT proconfig FROM pg_proc WHERE proname LIKE 'zdm%sync'").fetchone()
    assert off == (0,)
    assert config is not None and "TimeZone=Asia/Tokyo" in config[0]

"""Usage evidence for the contract gate: pg_stat_statements seen naming what contract drops.

Real servers (18, and 15), with the extension loaded; the "old app" is a second connection running
its statements while the window is open.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from zdm_runbook.inspect import usage
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change

SPEC = """
change: drop-odd-names
operations:
  - drop_column: {table: ledger_lines, column: amount$old}
  - drop_column: {table: ledger_lines, column: fee}
"""


def _old_app(dsn: str, query: str, stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True, application_name="old-app") as conn:
        while not stop.is_set():
            conn.execute(query.encode()).fetchall()
            time.sleep(0.02)


def _watched(dsn: str, query: str) -> usage.Usage:
    targets = usage.dropped(build_plan(parse_change(SPEC)))
    stop = threading.Event()
    app = threading.Thread(target=_old_app, args=(dsn, query, stop))
    app.start()
    try:
        time.sleep(0.2)
        with psycopg.connect(dsn, autocommit=True) as conn:
            return usage.watch(conn, targets, 1.0)
    finally:
        stop.set()
        app.join()


@pytest.fixture
def lines(any_pg_db: str) -> str:
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute('CREATE TABLE ledger_lines (id int PRIMARY KEY, "amount$old" int, fee int, feed int)')
        conn.execute("INSERT INTO ledger_lines VALUES (1, 10, 1, 2)")
    return any_pg_db


def test_a_column_whose_name_holds_a_dollar_is_seen_in_use(lines: str) -> None:
    seen = _watched(lines, 'SELECT "amount$old" FROM ledger_lines WHERE id = 1')
    assert [s["uses"] for s in seen.recent] == [["column ledger_lines.amount$old"]], seen.statements
    assert "column ledger_lines.amount$old" in seen.reasons()[0]


def test_names_match_whole_identifiers_only(lines: str) -> None:
    # feed is not fee, and amount$old is not amount: neither may open or close the gate by accident.
    seen = _watched(lines, "SELECT feed FROM ledger_lines WHERE id = 1")
    assert seen.recent == [], seen.statements
    seen = _watched(lines, "SELECT fee FROM ledger_lines WHERE id = 1")
    assert [s["uses"] for s in seen.recent] == [["column ledger_lines.fee"]]


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("amount$old", 'SELECT "amount$old" FROM t', True),
        ("amount$old", "SELECT amount$old FROM t", True),
        ("amount$old", "SELECT amount FROM t", False),
        ("amount", "SELECT amount$old FROM t", False),
        ("fee", "SELECT feed, fees FROM t", False),
        ("fee", "SELECT t.fee FROM t", True),
    ],
)
def test_name_pattern_on_the_server(any_pg_db: str, name: str, text: str, found: bool) -> None:
    with psycopg.connect(any_pg_db) as conn:
        row = conn.execute("SELECT %s ~* %s", [text, usage.name_pattern(name)]).fetchone()
    assert row is not None and row[0] is found


def test_zdm_statements_are_told_apart_from_the_apps(any_pg_db: str) -> None:
    """Every statement zdm sends ends with a comment that pg_stat_statements keeps (on 15 and 18):
    the gate's evidence lists the app's statements and only counts zdm's own."""
    from zdm_runbook.core.connect import connect  # noqa: PLC0415

    with psycopg.connect(any_pg_db, autocommit=True) as app:
        app.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        app.execute("CREATE TABLE t (id int PRIMARY KEY, old int)")
        app.execute("SELECT pg_stat_statements_reset()")
        app.execute("SELECT old FROM t WHERE id = 1")
    with connect(any_pg_db, autocommit=True) as ours:
        ours.execute("UPDATE t SET old = old WHERE id > 2;")
        ours.execute(
            psycopg.sql.SQL("SELECT count(*) FROM t WHERE {} IS NULL").format(psycopg.sql.Identifier("old"))
        )
        ours.execute("SELECT old FROM t WHERE id = 5 -- a comment to the end of the line")
        seen = usage.watch(ours, [usage.Target("column", "old", "t")], 0)
    assert [s["query"] for s in seen.app] == ["SELECT old FROM t WHERE id = $1"]
    assert seen.ours == 2 and seen.reasons() == []  # the line comment's statement merged with the app's

"""Label lint cases by measuring them: each runs on a fresh database with rows, through the probe.

A case is ``(sql, setup)``: ``setup`` (SQL) adds what the case needs beyond :data:`SCHEMA`. The
case runs after ``SET lock_timeout``/``statement_timeout`` (each is judged on its own merits, as
the corpus says), with the old app's statements (:data:`OLD_APP`) checked after each statement.
The label is :func:`zdm_runbook.lint.verdicts.judge`'s: unsafe when any statement is.
"""

from __future__ import annotations

import atexit
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from zdm_runbook.lint.probe import AppStatement, Probe
from zdm_runbook.lint.verdicts import Verdict, judge

PRELUDE = "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n"

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, email text);
CREATE TABLE orders (
    id int PRIMARY KEY, customer_id int, status text, note varchar(20), total numeric(10,2)
);
INSERT INTO customers SELECT g, 'c' || g || '@example.org' FROM generate_series(1, 300) g;
INSERT INTO orders SELECT g, g, 'new', 'n' || g, g FROM generate_series(1, 300) g;
CREATE INDEX orders_status_idx ON orders (status);
CREATE INDEX orders_old_idx ON orders (customer_id, status);
CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2020 PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE events_2026 (id int, at date NOT NULL);
INSERT INTO events SELECT g, date '2020-01-01' + g FROM generate_series(1, 300) g;
INSERT INTO events_2026 SELECT g, date '2026-01-01' + g FROM generate_series(1, 300) g;
CREATE TABLE old_orders (id int PRIMARY KEY);
INSERT INTO old_orders SELECT generate_series(1, 300);
CREATE FUNCTION sync() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER orders_sync BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION sync();
ANALYZE;
"""

# What the previous app version runs (psycopg placeholders, sample values).
OLD_APP: list[AppStatement] = [
    ("read order", "SELECT id, customer_id, status, note, total FROM orders WHERE id = %(id)s", {"id": 7}),
    (
        "place order",
        "INSERT INTO orders (id, customer_id, status, note, total) VALUES (%(id)s, 7, 'new', 'n', 9.5)",
        {"id": 100_000},
    ),
    ("pay order", "UPDATE orders SET status = 'paid' WHERE id = %(id)s", {"id": 7}),
    ("read customer", "SELECT id, email FROM customers WHERE id = %(id)s", {"id": 7}),
    (
        "sign up",
        "INSERT INTO customers (id, email) VALUES (%(id)s, %(email)s)",
        {"id": 9000, "email": "n@x.org"},
    ),
    ("count events", "SELECT count(*) FROM events WHERE at >= %(at)s", {"at": "2020-06-01"}),
]


_templates: dict[str, str] = {}


def _template(admin_dsn: str) -> str:
    """A database holding :data:`SCHEMA`, made once per server and copied for every case."""
    if admin_dsn not in _templates:
        name = f"zdm_lint_template_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            conn.execute(
                "DO $$ BEGIN CREATE ROLE reporting; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
        with psycopg.connect(make_conninfo(admin_dsn, dbname=name), autocommit=True) as conn:
            conn.execute(SCHEMA.encode())
        _templates[admin_dsn] = name
        atexit.register(_drop, admin_dsn, name)  # a server given by ZDM_TEST_DSN keeps nothing of ours
    return _templates[admin_dsn]


def _drop(admin_dsn: str, name: str) -> None:
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.Error:  # the throw-away server may be gone already
        pass


@contextmanager
def scratch(admin_dsn: str, setup: str = "") -> Iterator[str]:
    """A fresh database with :data:`SCHEMA` (and ``setup``), dropped afterwards."""
    name = f"zdm_lint_{uuid.uuid4().hex[:10]}"
    template = _template(admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
    dsn = make_conninfo(admin_dsn, dbname=name)
    try:
        if setup:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(setup.encode())
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def measure(admin_dsn: str, case_sql: str, setup: str = "") -> list[Verdict]:
    """The verdicts of the case's own statements (the prelude's are left out)."""
    with scratch(admin_dsn, setup) as dsn, Probe(dsn, app=OLD_APP) as probe:
        measured = probe.run_file(PRELUDE + case_sql + ";\n")
    return judge(measured)[2:]


def unsafe(verdicts: list[Verdict]) -> bool:
    return any(v.unsafe for v in verdicts)

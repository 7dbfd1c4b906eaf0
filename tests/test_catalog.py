"""A spec checked against a real catalog: what does not resolve is named, nothing is changed."""

from __future__ import annotations

from pathlib import Path

import psycopg

from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.catalog import check_change
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import apply_phase, scalar, zdm

SCHEMA = """
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, note text);
CREATE FUNCTION dice() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 4';
INSERT INTO orders VALUES (1, 1, 'a');
"""


def fingerprint(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[object, ...]:
    """Schema and data of the public schema, to prove a check changed nothing."""
    schema = conn.execute(
        "SELECT string_agg(attrelid::regclass || '.' || attname || ':' || atttypid::regtype, ',' ORDER BY 1)"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = 'public'::regnamespace AND attnum > 0 AND NOT attisdropped"
    ).fetchone()
    data = conn.execute("SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o").fetchone()
    return (schema, data)


def problems_for(conn: psycopg.Connection[tuple[object, ...]], operations: str) -> list[str]:
    change = parse_change(f"change: c1\noperations:\n{operations}")
    return [str(p) for p in check_change(conn, change)]


def test_unresolvable_names_are_reported_and_nothing_changes(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    conn.execute(SCHEMA)
    before = fingerprint(conn)
    found = problems_for(
        conn,
        """
  - add_column: {table: ordrs, column: c, type: int}
  - add_column: {table: orders, column: c, type: bigintt}
  - backfill: {table: orders, set: {note: "upper(notes)"}}
  - backfill: {table: orders, set: {note: "no_such_fn(note)"}}
  - add_column: {table: orders, column: d, type: int, default: "dice()"}
  - create_index: {table: orders, name: i, columns: [missing]}
  - add_foreign_key: {table: orders, name: f, columns: [customer_id], references: {table: customers, columns: [id]}}
  - rename_column: {table: orders, from: note, to: remark, type: varchar}
""",
    )
    assert found == [
        "operations[0].add_column.table: table public.ordrs does not exist",
        'operations[1].add_column: type "bigintt" does not exist',
        "operations[2].backfill.set.note: column notes does not exist in public.orders",
        "operations[3].backfill.set.note: no_such_fn(note): function no_such_fn(text) does not exist",
        "operations[4].add_column.default: dice() is VOLATILE on this server: as a DEFAULT it rewrites"
        " the table; use a backfill",
        "operations[5].create_index.columns: column missing does not exist in public.orders",
        "operations[6].add_foreign_key.references.table: table public.customers does not exist",
        "operations[7].rename_column.type: public.orders.note is text, not character varying:"
        " a rename keeps the type (use change_type to change it)",
    ]
    assert fingerprint(conn) == before


def test_columns_created_earlier_in_the_spec_count(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    conn.execute(SCHEMA)
    found = problems_for(
        conn,
        """
  - add_column: {table: orders, column: status, type: text}
  - backfill: {table: orders, set: {status: "'new'"}}
  - create_table: {table: items, columns: [{name: id, type: int}, {name: order_id, type: int}]}
  - add_foreign_key: {table: items, name: items_order_fk, columns: [order_id], references: {table: orders, columns: [id]}}
  - create_index: {table: orders, name: orders_status_idx, columns: [status]}
""",
    )
    assert found == []


def test_expression_type_mismatch_is_caught(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(SCHEMA)
    found = problems_for(
        conn,
        "  - change_type: {table: orders, column: note, new_column: note_n, type: int,"
        " using: 'note::int', reverse: 'note_n::point'}\n",
    )
    assert len(found) == 1
    assert found[0].startswith("operations[0].change_type.reverse: CAST(note_n AS point)")
    assert found[0].endswith("cannot cast type integer to point")


def test_rechecking_after_each_phase_still_passes(db: str) -> None:
    """A re-run after expand (new column present) or contract (old column gone) is not an error."""
    spec = parse_change(
        "change: c1\noperations:\n  - change_type: {table: orders, column: customer_id,"
        " new_column: customer_ref, type: bigint, using: 'customer_id::bigint', reverse: 'customer_ref::int'}\n"
    )
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    plan = build_plan(spec)
    for phase in Phase:
        apply_phase(db, plan, phase)
        with psycopg.connect(db) as conn:
            assert check_change(conn, spec) == [], phase


def test_a_backfill_on_a_table_with_no_key_to_walk_is_refused_before_expand(db: str, tmp_path: Path) -> None:
    """Every operation that backfills walks its table in key ranges. A table with no primary key and
    no unique NOT NULL key is refused by the catalog check, naming each operation's field, before
    expand adds anything; it used to pass the check, and expand's column and trigger were in place
    before migrate's backfill found no key. A nullable unique key is no key to walk; one the spec
    adds first is."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE logs (n int UNIQUE, at date, line text);"
            " CREATE TABLE refs (id int PRIMARY KEY); ALTER TABLE logs ADD COLUMN ref int REFERENCES refs"
        )
        found = problems_for(
            conn,
            """
  - backfill: {table: logs, set: {line: "coalesce(line, '')"}}
  - rename_column: {table: logs, from: line, to: text, type: text}
  - change_type: {table: logs, column: n, new_column: n_big, type: bigint, using: 'n::bigint', reverse: 'n_big::int'}
  - add_not_null_column: {table: logs, column: src, type: text, backfill: "'app'"}
  - change_key_type: {table: logs, column: ref}
  - add_column: {table: logs, column: free, type: text}
""",
        )
        why = (
            "public.logs has no primary key and no unique NOT NULL key: a backfill walks the table in key"
            " ranges and needs one"
        )
        fields = ("backfill", "rename_column", "change_type", "add_not_null_column", "change_key_type")
        assert [f.split(": ", 1)[0] for f in found] == [
            f"operations[{i}].{op}.table" for i, op in enumerate(fields)
        ]
        assert all(why in f for f in found), found
        keyed = (
            "  - add_primary_key: {table: logs, name: logs_pkey, columns: [n]}\n"  # the spec adds one first
        )
        assert problems_for(conn, keyed + "  - backfill: {table: logs, set: {line: \"''\"}}\n") == []
    spec = tmp_path / "logs.yaml"
    spec.write_text(
        "change: logs\noperations:\n  - rename_column: {table: logs, from: line, to: text, type: text}\n"
    )
    out = zdm("plan", str(spec), "--dsn-env", "T", env={"T": db})
    assert (
        out.returncode == 2
        and "operations[0].rename_column.table: public.logs has no primary key" in out.stderr
    )
    columns = "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'logs'::regclass AND attnum > 0"
    assert scalar(db, columns) == "n,at,line,ref"

"""A catalogue of malformed specs: each fails before any database is touched, with the field path
and a reason a user can act on; a spec with several problems reports all of them at once."""

from __future__ import annotations

import pytest

from zdm_runbook.core.errors import SpecError
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change

HEAD = "change: c1\noperations:\n"

CASES = [
    # (id, spec text, expected path, fragment of the message)
    (
        "bad-identifier",
        HEAD + "  - add_column: {table: orders, column: 'customer uuid', type: uuid}",
        "operations[0].add_column.column",
        "'customer uuid' is not a valid identifier",
    ),
    (
        "identifier-too-long",
        HEAD + f"  - add_column: {{table: orders, column: {'c' * 64}, type: int}}",
        "operations[0].add_column.column",
        "63",
    ),
    (
        "injection-in-table",
        HEAD + "  - drop_table: {table: 'orders; DROP TABLE users'}",
        "operations[0].drop_table.table",
        "not a valid identifier",
    ),
    (
        "three-part-table",
        HEAD + "  - drop_table: {table: a.b.c}",
        "operations[0].drop_table.table",
        "not 'table' or 'schema.table'",
    ),
    (
        "second-statement-in-expression",
        HEAD + '  - backfill: {table: t, set: {a: "1; DROP TABLE t"}}',
        "operations[0].backfill.set.a",
        "';'",
    ),
    (
        "comment-trick",
        HEAD + '  - backfill: {table: t, set: {a: "1 /* "}}',
        "operations[0].backfill.set.a",
        "not a valid expression",
    ),
    (
        "subquery-drop",
        HEAD + '  - add_check: {table: t, name: k, expression: "(DROP TABLE t) IS NULL"}',
        "operations[0].add_check.expression",
        "not a valid check expression",
    ),
    (
        "select-from-in-expression",
        HEAD + '  - backfill: {table: t, set: {a: "1 FROM pg_class"}}',
        "operations[0].backfill.set.a",
        "exactly one expression",
    ),
    (
        "side-effect-function",
        HEAD + '  - backfill: {table: t, set: {a: "pg_terminate_backend(1)"}}',
        "operations[0].backfill.set.a",
        "side effects",
    ),
    (
        "volatile-default",
        HEAD + "  - add_column: {table: t, column: c, type: uuid, default: 'gen_random_uuid()'}",
        "operations[0].add_column.default",
        "backfill",
    ),
    (
        "now-default",
        HEAD + "  - add_column: {table: t, column: c, type: timestamptz, default: 'now()'}",
        "operations[0].add_column.default",
        "backfill",
    ),
    (
        "current-timestamp-default",
        HEAD + "  - add_column: {table: t, column: c, type: timestamptz, default: CURRENT_TIMESTAMP}",
        "operations[0].add_column.default",
        "backfill",
    ),
    (
        "nextval-default",
        HEAD + "  - add_column: {table: t, column: c, type: int, default: \"nextval('s')\"}",
        "operations[0].add_column.default",
        "volatile",
    ),
    (
        "bad-type",
        HEAD + "  - add_column: {table: t, column: c, type: 'int; DROP TABLE t'}",
        "operations[0].add_column.type",
        "';'",
    ),
    (
        "type-is-expression",
        HEAD + "  - add_column: {table: t, column: c, type: '1 + 1'}",
        "operations[0].add_column.type",
        "not a valid type",
    ),
    (
        "unknown-operation",
        HEAD + "  - rename_schema: {from: s, to: u}",
        "operations[0]",
        "'rename_schema' is not an operation",
    ),
    (
        "unknown-field",
        HEAD + "  - drop_table: {table: t, cascade: true}",
        "operations[0].drop_table.cascade",
        "is not a known field",
    ),
    (
        "missing-field",
        HEAD + "  - add_column: {table: t, type: int}",
        "operations[0].add_column.column",
        "is required",
    ),
    (
        "wrong-kind",
        HEAD + "  - create_index: {table: t, name: i, columns: [a], unique: 'yes'}",
        "operations[0].create_index.unique",
        "expected true or false",
    ),
    (
        "index-columns-and-expression",
        HEAD + "  - create_index: {table: t, name: i, columns: [a], expression: 'lower(a)'}",
        "operations[0].create_index.columns",
        "exactly one of columns or expression",
    ),
    (
        "bad-change-id",
        "change: Orders_Change\noperations:\n  - drop_table: {table: t}",
        "change",
        "not a change id",
    ),
    ("no-operations", "change: c1\noperations: []", "operations", "non-empty list"),
    (
        "operation-two-keys",
        HEAD + "  - {drop_table: {table: t}, drop_column: {table: t, column: c}}",
        "operations[0]",
        "one key",
    ),
    (
        "raw-sql-drop-in-expand",
        HEAD + "  - raw_sql: {phase: expand, reason: r, sql: 'DROP TABLE t'}",
        "operations[0].raw_sql.sql",
        "belongs in contract",
    ),
    (
        "raw-sql-concurrently-with-others",
        HEAD
        + "  - raw_sql: {phase: expand, reason: r, sql: 'CREATE INDEX CONCURRENTLY i ON t (a); SELECT 1'}",
        "operations[0].raw_sql.sql",
        "cannot run in a transaction block",
    ),
    (
        "raw-sql-without-reason",
        HEAD + "  - raw_sql: {phase: expand, sql: 'SELECT 1'}",
        "operations[0].raw_sql.reason",
        "is required",
    ),
    (
        "change-type-using-ignores-old",
        HEAD
        + "  - change_type: {table: t, column: a, new_column: b, type: bigint, using: '1', reverse: 'b::int'}",
        "operations[0].change_type.using",
        "old column a",
    ),
    (  # measured on 15: the view reads the old column by position, and the drop fails under it
        "key-of-a-table-renamed-in-the-change",
        HEAD
        + "  - rename_table: {from: customers, to: clients}\n"
        + "  - change_key_type: {table: clients, column: id, type: bigint}",
        "operations[1].change_key_type.table",
        "Widen the key in a change of its own, through contract, then rename: change_key_type:"
        " {table: public.customers",
    ),
    (
        "key-of-a-table-renamed-later-in-the-change",
        HEAD
        + "  - change_key_type: {table: customers, column: id, type: bigint}\n"
        + "  - rename_table: {from: customers, to: clients}",
        "operations[0].change_key_type.table",
        "would still read the old id column (NULL past its range)",
    ),
    (
        "rename-to-itself",
        HEAD + "  - rename_column: {table: t, from: a, to: a, type: int}",
        "operations[0].rename_column.to",
        "same as from",
    ),
    (
        "duplicate-index-name",
        HEAD
        + "  - create_index: {table: t, name: i, columns: [a]}\n  - create_index: {table: t, name: i, columns: [b]}",
        "operations[1].create_index",
        "also created by operations[0]",
    ),
    (
        "escaped-nul-byte",
        HEAD + '  - backfill: {table: t, set: {a: "1\\0"}}',
        "operations[0].backfill.set.a",
        "NUL byte",
    ),
    ("raw-nul-byte", HEAD + "  - drop_table: {table: t\x00}", "", "NUL byte"),
    (
        "huge-expression",
        HEAD + "  - backfill: {table: t, set: {a: '" + "1+" * 6000 + "1'}}",
        "operations[0].backfill.set.a",
        "at most",
    ),
    ("not-yaml", "change: [unclosed", "", "not valid YAML"),
    ("not-a-mapping", "- just\n- a list", "", "expected a mapping"),
    (
        "fk-column-count",
        HEAD
        + "  - add_foreign_key: {table: t, name: f, columns: [a, b], references: {table: u, columns: [id]}}",
        "operations[0].add_foreign_key.references.columns",
        "has 1 columns",
    ),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec_is_refused_with_its_path(spec: str, path: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        build_plan(parse_change(spec))
    problems = info.value.problems
    matching = [p for p in problems if p.path == path and fragment in p.message]
    assert matching, f"expected {path}: ...{fragment}... in {[str(p) for p in problems]}"


def test_every_problem_is_reported_at_once() -> None:
    spec = """
change: Bad Id
dual_write: sometimes
operations:
  - add_column: {table: orders, column: 'customer uuid', type: uuid}
  - add_column: {table: orders, column: c2, type: 'not a type at all ('}
  - backfill: {table: orders, set: {c2: "random()"}, where: "1; DROP TABLE orders"}
  - frobnicate: {}
extra: true
"""
    with pytest.raises(SpecError) as info:
        parse_change(spec, source="bad.yaml")
    paths = [p.path for p in info.value.problems]
    assert paths == [
        "change",
        "dual_write",
        "operations[0].add_column.column",
        "operations[1].add_column.type",
        "operations[2].backfill.where",
        "operations[3]",
        "extra",
    ]
    text = str(info.value)
    assert text.startswith("bad.yaml: 7 problems in the spec:")
    assert "operations[0].add_column.column: 'customer uuid' is not a valid identifier" in text


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 15

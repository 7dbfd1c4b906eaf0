"""zdm lint on the labelled corpus, on file-order rules, phases, suppression and the command itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zdm_runbook.lint.analysis import analyze
from zdm_runbook.lint.linter import SqlFileError, lint_text

from .lint_corpus import CORPUS
from .test_cli import zdm

PRELUDE = "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n"


def _unsafe(sql: str) -> bool:
    _, findings = lint_text(PRELUDE + sql + ";\n", "corpus.sql")
    return any(f.severity == "error" for f in findings)


def test_the_corpus_is_large_and_balanced() -> None:
    unsafe = sum(label for _, label in CORPUS)
    assert len(CORPUS) >= 120
    assert unsafe >= 50 and len(CORPUS) - unsafe >= 50


# Where text alone cannot know what PostgreSQL measurably does (the labels are measured: see
# tests/test_lint_measured.py); catalog mode and --app-queries are for these.
TEXT_MODE_GUESSES = {
    "DROP TABLE IF EXISTS old_orders": "whether the old app uses it",
    "ALTER TABLE orders SET LOGGED": "that the table is logged already (nothing to rewrite)",
    "ALTER TABLE orders SET TABLESPACE pg_default": "that the table is in that tablespace already",
    "ALTER TABLE orders ADD COLUMN qty2 positive_int": "that the type is a domain with a CHECK, and which tables use it",
    "ALTER TABLE orders ADD COLUMN qty3 positive_int DEFAULT 5": "that the type is a domain with a CHECK, and which tables use it",
    "ALTER TABLE orders ADD CONSTRAINT orders_pk2 PRIMARY KEY USING INDEX orders_cid_key": "that the column is still nullable",
    "CREATE TABLE events_2030 PARTITION OF events FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')": "whether a default partition has rows, or a CHECK matches the bounds",
    "-- a CHECK matches the bounds\nALTER TABLE events ATTACH PARTITION events_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')": "whether a default partition has rows, or a CHECK matches the bounds",
    "ALTER DOMAIN positive_int ADD CONSTRAINT positive_int_small CHECK (VALUE < 1000)": "that the type is a domain with a CHECK, and which tables use it",
    "SET TimeZone = 'UTC'; ALTER TABLE orders ALTER COLUMN placed TYPE timestamptz": "the column's type now (and its indexes)",
    "ALTER TABLE orders ALTER COLUMN note TYPE varchar(40)": "the column's type now (and its indexes)",
    "ALTER TABLE orders ALTER COLUMN note TYPE text": "the column's type now (and its indexes)",
    "ALTER TABLE orders ALTER COLUMN total TYPE numeric(12, 2)": "the column's type now (and its indexes)",
    "ALTER TABLE orders ALTER COLUMN total TYPE numeric": "the column's type now (and its indexes)",
    "ALTER TABLE orders ALTER COLUMN customer_id TYPE int": "the column's type now (and its indexes)",
    "ALTER TABLE customers ALTER COLUMN tier DROP DEFAULT": "what the old app writes",
    "ALTER TABLE orders ADD CONSTRAINT orders_total_big CHECK (total > 10) NOT VALID": "what the old app writes",
    "ALTER TYPE order_state RENAME VALUE 'paid' TO 'settled'": "what the old app writes",
    "-- a validated CHECK proves it\nALTER TABLE orders ALTER COLUMN status SET NOT NULL": "that a validated CHECK already proves it",
    "ALTER TABLE customers ALTER COLUMN email SET NOT NULL": "that a validated CHECK already proves it",
    "ALTER TABLE old_orders RENAME TO older_orders": "whether the old app uses it",
    "ALTER TABLE old_orders RENAME COLUMN id TO old_id": "whether the old app uses it",
    "DROP TABLE old_orders CASCADE": "whether the old app uses it",
    "ALTER TABLE orders DROP COLUMN IF EXISTS memo": "whether the old app uses it",
    "UPDATE orders SET status = 'new' WHERE id > 0": "how many rows the WHERE matches",
    "UPDATE orders SET status = 'new' WHERE status IS NOT NULL": "how many rows the WHERE matches",
    "DELETE FROM old_orders WHERE id >= 1": "how many rows the WHERE matches",
    "ALTER TABLE orders SET ACCESS METHOD heap": "that the table uses that method already",
    "ALTER TABLE events SET (parallel_workers = 2)": "that the table is partitioned (it fails as written)",
    "ALTER TABLE orders ALTER COLUMN status TYPE text": "the column's type now (and its indexes)",
    "BEGIN; UPDATE orders SET note = 'x' WHERE id = 1; ALTER TABLE orders ADD COLUMN y10 int; COMMIT": "that the data change is one row",
    'ALTER TABLE orders ALTER COLUMN note TYPE varchar(20) COLLATE "C"': "the column's type now (and its indexes)",
    "ALTER TABLE orders ADD COLUMN qty positive_int": "that the type is a domain with a CHECK (it says so, as info)",
    "ALTER TABLE orders ALTER COLUMN total TYPE numeric(20, 2)": "the column's type now (and its indexes)",
    "ALTER TABLE orders ALTER COLUMN status TYPE varchar": "the column's type now (and its indexes)",
    "CREATE INDEX CONCURRENTLY events_at_idx ON events (at)": "that the table is partitioned (it fails as written)",
    "UPDATE orders SET note = NULL WHERE note IS NOT NULL": "how many rows the WHERE matches",
    'ALTER TABLE "orders" ALTER COLUMN "note" TYPE varchar(40) USING "note"::varchar(40)': "the column's type now (and its indexes)",
}


@pytest.mark.parametrize(("sql", "unsafe"), CORPUS, ids=[s[:70] for s, _ in CORPUS])
def test_corpus_statement_is_judged_as_labelled(sql: str, unsafe: bool) -> None:
    if sql in TEXT_MODE_GUESSES:
        assert _unsafe(sql) != unsafe  # text mode errs on the side of an error here
    else:
        assert _unsafe(sql) == unsafe


def test_a_lock_taking_statement_needs_lock_timeout_first() -> None:
    _, findings = lint_text(
        "ALTER TABLE t ADD COLUMN c int;\nSET lock_timeout = '1s';\nALTER TABLE t ADD COLUMN d int;"
    )
    rules = [(f.line, f.rule, f.severity) for f in findings]
    assert rules == [(1, "missing-lock-timeout", "error"), (3, "missing-statement-timeout", "warning")]


def test_phase_awareness() -> None:
    sql = PRELUDE + "ALTER TABLE t DROP COLUMN c;\nUPDATE t SET a = 1 WHERE id < 10;\n"
    _, in_expand = lint_text(sql, phase="expand")
    assert [f.rule for f in in_expand if f.rule == "phase"] == ["phase", "phase"]
    _, in_contract = lint_text(sql, phase="contract")
    assert [f.message for f in in_contract if f.rule == "phase"] == [
        "data changes (backfills) belong in migrate, not contract"
    ]


def test_suppression_comment_silences_one_rule_for_one_statement() -> None:
    sql = PRELUDE + "-- zdm: ignore drop-column\nALTER TABLE t DROP COLUMN c;\nALTER TABLE t DROP COLUMN d;\n"
    _, findings = lint_text(sql)
    assert [(f.rule, f.line) for f in findings] == [("drop-column", 5)]


def test_a_parse_error_names_the_file_and_line() -> None:
    with pytest.raises(SqlFileError, match=r"m\.sql:3: cannot parse: syntax error at or near"):
        lint_text("SELECT 1;\n\nALTER TABLE t ADD COLUM x int;", "m.sql")


def test_version_awareness() -> None:
    old = lint_text(PRELUDE + "ALTER TABLE t ADD COLUMN c int DEFAULT 0;", version=10)[1]
    assert [f.rule for f in old] == ["add-column-rewrite"]
    assert (
        lint_text(PRELUDE + "REINDEX INDEX CONCURRENTLY i;", version=11)[1][0].rule
        == "reindex-concurrently-version"
    )
    detach = "ALTER TABLE events DETACH PARTITION events_2020 CONCURRENTLY;"
    assert [f.rule for f in lint_text(PRELUDE + detach, version=13)[1]] == ["detach-concurrently-version"]
    assert lint_text(PRELUDE + detach, version=14)[1] == []
    in_tx = lint_text(PRELUDE + "BEGIN;\n" + detach + "\nCOMMIT;", version=18)[1]
    assert [f.rule for f in in_tx] == ["concurrently-in-transaction"]
    for pg18_only in (
        "ALTER TABLE t ADD CONSTRAINT t_a_nn NOT NULL a NOT VALID;",
        "ALTER TABLE t ADD COLUMN v int GENERATED ALWAYS AS (a * 2) VIRTUAL;",
    ):
        assert [f.rule for f in lint_text(PRELUDE + pg18_only, version=17)[1]] == ["needs-postgresql-18"]
        assert lint_text(PRELUDE + pg18_only, version=18)[1] == []
    attach = "ALTER TABLE events ATTACH PARTITION e2 FOR VALUES FROM (1) TO (2);"
    assert analyze(attach, 11)[0].strongest == "AccessExclusiveLock"
    assert analyze(attach, 12)[0].strongest == "ShareUpdateExclusiveLock"


def test_zdm_lint_exit_codes_and_json(tmp_path: Path) -> None:
    clean = tmp_path / "clean.sql"
    clean.write_text(PRELUDE + "ALTER TABLE orders ADD COLUMN c uuid;\n")
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE INDEX i ON orders (c);\n")
    broken = tmp_path / "broken.sql"
    broken.write_text("ALTER TABLE x ADD COLUM y int;\n")
    ok = zdm("lint", str(clean), "--explain")
    assert ok.returncode == 0, ok.stderr
    assert "#2 AlterTableStmt: orders AccessExclusiveLock (catalog, blocks reads, blocks writes)" in ok.stdout
    found = zdm("lint", str(bad), "--format", "json")
    assert found.returncode == 1
    rows = json.loads(found.stdout)
    assert {r["rule"] for r in rows} == {"create-index-blocking", "missing-lock-timeout"}
    assert set(rows[0]) == {
        "file", "line", "column", "statement_index", "rule", "severity", "relation", "lock_mode",
        "rewrites", "blocks_reads", "blocks_writes", "message", "safe_alternative",
    }  # fmt: skip
    unusable = zdm("lint", str(broken))
    assert unusable.returncode == 2
    assert "broken.sql:1: cannot parse" in unusable.stderr


def test_zdm_plan_shows_each_steps_locks() -> None:
    out = zdm(
        "plan", str(Path(__file__).resolve().parent.parent / "zdm_runbook/examples/orders-customer-ref.yaml")
    )
    assert out.returncode == 0, out.stderr
    locks = [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("-- locks:")]
    assert "-- locks: public.orders AccessExclusiveLock (catalog)" in locks
    assert "-- locks: public.orders ShareUpdateExclusiveLock (index build)" in locks
    assert any("in short keyset batches" in line for line in locks)
    assert "-- locks: public.orders ShareUpdateExclusiveLock (scan)" in locks  # VALIDATE


@pytest.mark.parametrize(
    ("sql", "destructive", "phase"),
    [
        ("ALTER TABLE t ADD COLUMN c int", False, "expand"),
        ("CREATE INDEX CONCURRENTLY i ON t (c)", False, "expand"),
        ("UPDATE t SET c = 1 WHERE id < 100", False, "migrate"),
        ("ALTER TABLE t ADD CONSTRAINT k CHECK (c > 0) NOT VALID", False, "switch"),
        ("ALTER TABLE t VALIDATE CONSTRAINT k", False, "switch"),
        ("ALTER TABLE t ALTER COLUMN c SET NOT NULL", False, "switch"),
        ("ALTER TABLE t DROP COLUMN c", True, "contract"),
        ("DROP INDEX CONCURRENTLY i", True, "contract"),
        ("ALTER TABLE t ALTER COLUMN c TYPE bigint", True, None),
        ("ALTER TABLE t RENAME COLUMN c TO d", True, None),
    ],
)
def test_each_statement_is_classified_additive_or_destructive_with_its_phase(
    sql: str, destructive: bool, phase: str | None
) -> None:
    (a,) = analyze(sql)
    assert (a.destructive, a.phase) == (destructive, phase)

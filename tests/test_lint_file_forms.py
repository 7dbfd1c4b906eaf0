"""Text mode on the forms a migration file takes: DO blocks (one transaction), psql's meta-commands,
COMMIT AND CHAIN; on what the file itself proves (a validated NOT NULL check, a view that takes a
renamed table's name); and the volatile functions as PostgreSQL's own catalog says. The labels of
the corpus cases these rules are for are measured in tests/test_lint_measured.py; here, what each
rule says and on which line.
"""

from __future__ import annotations

import psycopg
import pytest

from zdm_runbook.lint.do_blocks import resolve
from zdm_runbook.lint.linter import lint_text
from zdm_runbook.spec.volatile_builtins import CATALOG, EXTENSIONS

PRELUDE = "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n"


def _rules(text: str) -> list[tuple[int, str, str]]:
    return [(f.line, f.rule, f.severity) for f in lint_text(text, "m.sql")[1]]


def test_a_do_blocks_statements_are_linted_each_on_its_own_line() -> None:
    text = PRELUDE + (
        "DO $$\n"
        "BEGIN\n"
        "  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'fk') THEN\n"
        "    ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers (id);\n"
        "  END IF;\n"
        "  EXECUTE 'CREATE INDEX orders_note_idx ON orders (note)';\n"
        "END\n"
        "$$;\n"
    )
    assert _rules(text) == [(6, "add-foreign-key-validated", "error"), (8, "create-index-blocking", "error")]


def test_concurrently_in_a_do_block_fails_as_written_and_is_said_so() -> None:
    (found,) = lint_text(PRELUDE + "DO $$ BEGIN CREATE INDEX CONCURRENTLY i ON orders (note); END $$;")[1]
    assert (found.rule, found.severity) == ("concurrently-in-transaction", "error")
    assert "a DO block runs as one transaction" in found.message


def test_a_do_block_holds_its_first_lock_while_the_rest_runs() -> None:
    text = (
        PRELUDE
        + "DO $$ BEGIN ALTER TABLE orders ADD COLUMN y int; UPDATE orders SET y = 1 WHERE id < 10; END $$;"
    )
    assert [r for _, r, s in _rules(text) if s == "error"] == [
        "runs-under-held-lock",
        "data-in-ddl-transaction",
    ]


def test_timeouts_set_inside_a_do_block_count_and_a_local_one_ends_with_it() -> None:
    inside = "DO $$ BEGIN SET LOCAL lock_timeout = '1s'; ALTER TABLE orders ADD COLUMN a int; END $$;\n"
    after = "ALTER TABLE orders ADD COLUMN b int;\n"
    rules = _rules("SET statement_timeout = '1min';\n" + inside + after)
    assert rules == [(3, "missing-lock-timeout", "error")]  # the ALTER after the block, not the one in it
    session = "DO $$ BEGIN PERFORM set_config('lock_timeout', '1s', false); END $$;\n"
    assert _rules("SET statement_timeout = '1min';\n" + session + after) == []


def test_an_execute_the_text_cannot_resolve_is_said_to_be_unlinted() -> None:
    text = PRELUDE + (
        "DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables LOOP\n"
        "  EXECUTE format('ALTER TABLE %I ALTER COLUMN id TYPE bigint', t);\n"
        "END LOOP; END $$;"
    )
    (found,) = lint_text(text)[1]
    assert (found.rule, found.severity, found.line) == ("do-dynamic-sql", "info", 4)
    assert "format('ALTER TABLE %I ALTER COLUMN id TYPE bigint', t)" in found.message


@pytest.mark.parametrize(
    ("expression", "made"),
    [
        ("'VACUUM orders'", "VACUUM orders"),
        ("'ALTER TABLE ' || 'orders' || ' ADD x int'", "ALTER TABLE orders ADD x int"),
        (
            "format('ALTER TABLE %I.%I ADD %s int', 'public', 'My Orders', 'x')",
            'ALTER TABLE public."My Orders" ADD x int',
        ),
        ("format('COMMENT ON TABLE t IS %L', 'it''s')", "COMMENT ON TABLE t IS 'it''s'"),
        ("format('%1$s', 'x')", None),  # positional arguments: not resolved, so reported unlinted
        ("'ALTER TABLE ' || tab", None),
        ("$q$DROP TABLE t$q$", "DROP TABLE t"),
    ],
)
def test_execute_strings_made_of_literals_are_resolved(expression: str, made: str | None) -> None:
    assert resolve(expression) == made


def test_a_do_block_in_another_language_is_left_alone() -> None:
    assert _rules(PRELUDE + "DO LANGUAGE plpython3u $$ plpy.execute('TRUNCATE orders') $$;") == []


def test_set_not_null_proven_by_a_check_the_file_validated_is_no_scan() -> None:
    check = "ALTER TABLE orders ADD CONSTRAINT nn CHECK (status IS NOT NULL) NOT VALID;\n"
    validate = "ALTER TABLE orders VALIDATE CONSTRAINT nn;\n"
    set_nn = "ALTER TABLE orders ALTER COLUMN status SET NOT NULL;\n"
    proven = lint_text(PRELUDE + check + validate + set_nn)[1]
    assert [(f.rule, f.severity) for f in proven if f.rule == "set-not-null-scan"] == [
        ("set-not-null-scan", "info")
    ]
    assert "nn, validated above, proves it" in proven[-1].message
    # not validated, another column, or before 12: the scan is still there
    assert ("set-not-null-scan", "error") in [
        (f.rule, f.severity) for f in lint_text(PRELUDE + check + set_nn)[1]
    ]
    other = "ALTER TABLE orders ALTER COLUMN note SET NOT NULL;\n"
    assert ("set-not-null-scan", "error") in [
        (f.rule, f.severity) for f in lint_text(PRELUDE + check + validate + other)[1]
    ]
    old = lint_text(PRELUDE + check + validate + set_nn, version=11)[1]
    assert ("set-not-null-scan", "error") in [(f.rule, f.severity) for f in old]


def test_a_rename_whose_old_name_a_view_takes_in_the_same_transaction_is_advice() -> None:
    same = "BEGIN;\nALTER TABLE orders RENAME TO purchases;\nCREATE VIEW orders AS SELECT * FROM purchases;\nCOMMIT;\n"
    assert ("rename", "info") in [(f.rule, f.severity) for f in lint_text(PRELUDE + same)[1]]
    apart = "ALTER TABLE orders RENAME TO purchases;\nCREATE VIEW orders AS SELECT * FROM purchases;\n"
    assert ("rename", "error") in [(f.rule, f.severity) for f in lint_text(PRELUDE + apart)[1]]
    other = "BEGIN;\nALTER TABLE orders RENAME TO purchases;\nCREATE VIEW orders_v AS SELECT * FROM purchases;\nCOMMIT;\n"
    assert ("rename", "error") in [(f.rule, f.severity) for f in lint_text(PRELUDE + other)[1]]


def test_identity_always_on_a_column_the_old_app_writes_and_an_inline_key_with_a_default() -> None:
    for statement in (
        "ALTER TABLE orders ALTER COLUMN id SET GENERATED ALWAYS",
        "ALTER TABLE orders ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY",
    ):
        assert ("identity-rejects-values", "error") in [
            (r, s) for _, r, s in _rules(PRELUDE + statement + ";")
        ]
    assert _rules(PRELUDE + "ALTER TABLE orders ALTER COLUMN id SET GENERATED BY DEFAULT;") == []
    keyed = "ALTER TABLE orders ADD COLUMN r int DEFAULT NULL REFERENCES customers (id);"
    assert [(r, s) for _, r, s in _rules(PRELUDE + keyed)] == [("add-column-foreign-key-scan", "error")]
    assert _rules(PRELUDE + "ALTER TABLE orders ADD COLUMN r int REFERENCES customers (id);") == []


def test_a_stable_default_is_catalog_only_and_a_volatile_one_a_rewrite_by_name() -> None:
    stable = "ALTER TABLE orders ADD COLUMN x bigint DEFAULT txid_current();"
    assert _rules(PRELUDE + stable) == []
    qualified = "ALTER TABLE orders ADD COLUMN x float8 DEFAULT pg_catalog.random();"
    assert [r for _, r, _ in _rules(PRELUDE + qualified)] == ["add-column-rewrite"]


@pytest.mark.pg
def test_the_volatile_names_are_what_pg_proc_says(any_pg_db: str) -> None:
    """Every volatile function of pg_catalog (15 to 18) is in the list, and every name in the list
    that the server has is volatile there; the extensions' too, where the server ships them."""
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        version = conn.info.server_version // 10000
        rows = conn.execute(
            "SELECT proname, bool_or(provolatile = 'v') FROM pg_proc"
            " WHERE pronamespace = 'pg_catalog'::regnamespace GROUP BY proname"
        ).fetchall()
        available = {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}
        for extension in sorted({"uuid-ossp", "pgcrypto"} & available):
            conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{extension}"')  # type: ignore[arg-type]
        extension_rows = conn.execute(
            "SELECT p.proname, bool_or(p.provolatile = 'v') FROM pg_proc p"
            " JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'"
            " JOIN pg_extension e ON e.oid = d.refobjid AND e.extname IN ('uuid-ossp', 'pgcrypto')"
            " GROUP BY p.proname"
        ).fetchall()
    volatile = {name for name, v in rows if v}
    if 15 <= version <= 18:
        assert volatile - CATALOG == set()
    assert {name for name, v in rows if not v} & CATALOG == set()
    assert {name for name, v in extension_rows if not v} & EXTENSIONS == set()
    assert {"txid_current", "pg_current_xact_id", "now"} & CATALOG == set()
    if {"uuid-ossp", "pgcrypto"} <= available:
        assert {name for name, v in extension_rows if v} == EXTENSIONS


PSQL_FILE = """\\set ON_ERROR_STOP on
\\timing on
SET lock_timeout = '1s';
SET statement_timeout = '1min';
SELECT format('ALTER TABLE %I ADD COLUMN audit_at timestamptz', tablename) FROM pg_tables \\gexec
SELECT E'it\\'s \\\\ fine', $t$ \\not a meta-command $t$, '\\also not' /* \\nor this */;
ALTER TABLE orders ADD COLUMN z int DEFAULT 1 REFERENCES customers (id);
"""


def test_psql_meta_commands_are_skipped_lines_kept_and_the_unseen_ones_named() -> None:
    analyses, findings = lint_text(PSQL_FILE, "m.sql")
    assert [(f.line, f.rule, f.severity) for f in findings] == [
        (5, "psql-meta-command", "info"),
        (7, "add-column-foreign-key-scan", "error"),
    ]
    assert "\\gexec runs each value of the query's result as a statement" in findings[0].message
    assert [a.line for a in analyses] == [3, 4, 5, 6, 7]  # \\gexec ended its query, as ; does
    assert "$t$ \\not a meta-command $t$" in analyses[3].text


def test_commit_and_chain_starts_the_next_transaction_at_once() -> None:
    text = (
        PRELUDE
        + "BEGIN;\nALTER TABLE orders ADD COLUMN x int;\nCOMMIT AND CHAIN;\nCREATE INDEX CONCURRENTLY i ON orders (x);\nCOMMIT;\n"
    )
    assert ("concurrently-in-transaction", "error") in [(f.rule, f.severity) for f in lint_text(text)[1]]


@pytest.mark.pg
def test_catalog_mode_measures_a_psql_file_and_keeps_what_it_did_not_run(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE customers (id int PRIMARY KEY); CREATE TABLE orders (id int PRIMARY KEY, note text);"
            " INSERT INTO customers VALUES (1); INSERT INTO orders VALUES (1, 'x');"
        )
        findings = lint_text(PSQL_FILE, "m.sql", conn=conn)[1]
    assert [(f.line, f.rule) for f in findings if f.severity != "info"] == [
        (7, "add-column-foreign-key-scan"),
        (7, "measured"),
    ]
    assert (5, "psql-meta-command") in [(f.line, f.rule) for f in findings]


def test_a_default_dropped_from_a_column_the_file_made_not_null_breaks_the_old_apps_inserts() -> None:
    django = (
        'ALTER TABLE "orders" ADD COLUMN "state" varchar(20) DEFAULT \'new\' NOT NULL;\n'
        'ALTER TABLE "orders" ALTER COLUMN "state" DROP DEFAULT;\n'
    )
    (found,) = lint_text(PRELUDE + django)[1]
    assert (found.line, found.rule, found.severity) == (4, "drop-default-not-null", "error")
    assert "state is NOT NULL (this file made it so)" in found.message
    nullable = (
        "ALTER TABLE orders ADD COLUMN s text DEFAULT 'x';\nALTER TABLE orders ALTER COLUMN s DROP DEFAULT;\n"
    )
    assert lint_text(PRELUDE + nullable)[1] == []
    made = "ALTER TABLE orders ALTER COLUMN note SET NOT NULL;\nALTER TABLE orders ALTER COLUMN note DROP DEFAULT;\n"
    assert [f.rule for f in lint_text(PRELUDE + made)[1]] == ["set-not-null-scan", "drop-default-not-null"]


def test_drop_index_concurrently_of_several_fails_as_written() -> None:
    (found,) = lint_text(PRELUDE + "DROP INDEX CONCURRENTLY IF EXISTS a_idx, b_idx;")[1]
    assert (found.rule, found.severity) == ("drop-index-concurrently-many", "error")
    assert lint_text(PRELUDE + "DROP INDEX CONCURRENTLY IF EXISTS a_idx;")[1] == []


def test_an_enum_value_added_in_the_transaction_that_uses_it_fails_as_written() -> None:
    add = "BEGIN;\nALTER TYPE mood ADD VALUE 'meh';\n"
    for use in (
        "ALTER TABLE orders ADD COLUMN m mood DEFAULT 'meh';\n",
        "UPDATE orders SET m = 'meh'::public.mood WHERE id = 1;\n",
    ):
        (found,) = [f for f in lint_text(PRELUDE + add + use + "COMMIT;\n")[1] if f.severity == "error"]
        assert (found.line, found.rule) == (5, "new-enum-value-in-transaction")
        assert 'uses "meh" of mood' in found.message
    for fine in (
        "ALTER TABLE orders ADD COLUMN m mood DEFAULT 'ok';\nCOMMIT;\n",  # another value
        "SELECT 'meh'::text;\nCOMMIT;\n",  # not the enum
        "COMMIT;\nALTER TABLE orders ADD COLUMN m mood DEFAULT 'meh';\n",  # committed first
    ):
        assert [f for f in lint_text(PRELUDE + add + fine)[1] if f.severity == "error"] == []


def test_a_read_of_the_table_under_the_transactions_lock_and_a_reset_of_the_timeouts() -> None:
    held = "BEGIN;\nALTER TABLE orders ADD COLUMN a int;\nSELECT id FROM orders WHERE id = 1;\nCOMMIT;\n"
    (found,) = [f for f in lint_text(PRELUDE + held)[1] if f.severity == "error"]
    assert (found.line, found.rule) == (5, "runs-under-held-lock")
    assert "reads orders while the AccessExclusiveLock taken by statement 3" in found.message
    other = "BEGIN;\nALTER TABLE orders ADD COLUMN a int;\nSELECT count(*) FROM customers;\nCOMMIT;\n"
    assert [f for f in lint_text(PRELUDE + other)[1] if f.severity == "error"] == []
    for reset in ("RESET ALL;\n", "DISCARD ALL;\n"):
        rules = [f.rule for f in lint_text(PRELUDE + reset + "ALTER TABLE orders ADD COLUMN a int;\n")[1]]
        assert rules == ["missing-lock-timeout"]


def test_a_function_or_procedure_the_file_defines_is_linted_where_it_is_called() -> None:
    function = (
        "CREATE FUNCTION mig() RETURNS void LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        "  ALTER TABLE orders ALTER COLUMN customer_id TYPE bigint;\n"
        "END $$;\n"
    )
    assert lint_text(PRELUDE + function)[1] == []  # defining it runs nothing
    (found,) = lint_text(PRELUDE + function + "SELECT mig();\n")[1]
    assert (found.line, found.rule) == (5, "alter-column-type")  # the line of the ALTER, in the body
    assert found.message.endswith("(in mig(), run by the call on line 7)")
    batches = (
        "CREATE PROCEDURE mig() LANGUAGE plpgsql AS $$ BEGIN ALTER TABLE orders ADD COLUMN a int; {commit}"
        " UPDATE orders SET a = 1 WHERE id < 10; END $$;\nCALL mig();\n"
    )
    held = [f.rule for f in lint_text(PRELUDE + batches.format(commit=""))[1] if f.severity == "error"]
    assert held == ["runs-under-held-lock", "data-in-ddl-transaction"]
    assert lint_text(PRELUDE + batches.format(commit="COMMIT;"))[1] == []  # the COMMIT let go first
    in_block = PRELUDE + "BEGIN;\n" + batches.format(commit="COMMIT;") + "COMMIT;\n"
    assert "commit-in-block" in [f.rule for f in lint_text(in_block)[1]]
    atomic = "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;\nSELECT f();\n"
    assert [f.rule for f in lint_text(PRELUDE + atomic)[1]] == ["commit-in-block"]


def test_what_postgresql_refuses_on_a_partitioned_table_the_file_created() -> None:
    made = "CREATE TABLE ev (id int, at date) PARTITION BY RANGE (at);\n"
    part = "CREATE TABLE ev_a PARTITION OF ev FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');\n"
    for then, line in (
        ("CREATE INDEX CONCURRENTLY ev_at ON ev (at);\n", 4),
        ("ALTER TABLE ev SET (fillfactor = 70);\n", 4),
        (part + "ALTER TABLE ev_a ADD COLUMN x int;\n", 5),
    ):
        (found,) = [f for f in lint_text(PRELUDE + made + then)[1] if f.severity == "error"]
        assert (found.line, found.rule) == (line, "fails-on-partitions")
    fine = part + "CREATE INDEX ev_at ON ONLY ev (at);\nCREATE INDEX CONCURRENTLY ev_a_at ON ev_a (at);\n"
    assert [f for f in lint_text(PRELUDE + made + fine)[1] if f.severity == "error"] == []
    copied = "CREATE TABLE t6 AS SELECT * FROM orders;\nALTER TABLE t6 ADD PRIMARY KEY (id);\n"
    assert lint_text(PRELUDE + copied)[1] == []  # a table the file made is nobody else's yet


@pytest.mark.pg
def test_a_foreign_key_on_a_table_the_file_created_asks_whether_the_file_filled_it(db: str) -> None:
    django = (
        "CREATE TABLE shipments (id bigint PRIMARY KEY, order_id int NOT NULL);\n"
        "ALTER TABLE shipments ADD CONSTRAINT shipments_order_fk FOREIGN KEY (order_id)"
        " REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED;\n"
    )
    (empty,) = [f for f in lint_text(PRELUDE + django)[1] if f.line == 4]
    assert (empty.rule, empty.severity) == ("add-foreign-key-validated", "info")
    assert "shipments was created above and has no rows yet" in empty.message
    copied = PRELUDE + django.replace(";\n", ";\nINSERT INTO shipments SELECT id, id FROM orders;\n", 1)
    (filled,) = [f for f in lint_text(copied)[1] if f.line == 5]
    assert (filled.rule, filled.severity) == ("add-foreign-key-filled-table", "error")
    assert "blocking that table's writes" in filled.message
    # The shadow copy's orders is empty, and so would its copy be: catalog mode keeps the rule.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 50)"
        )
        found = lint_text(copied, conn=conn)[1]
    assert ("add-foreign-key-filled-table", "error") in [(f.rule, f.severity) for f in found]


def test_psql_variables_are_interpolated_as_psql_does_and_an_unset_one_is_named() -> None:
    text = (
        "\\set schema app\n"
        "\\set note 'it''s'\n"
        + PRELUDE
        + "ALTER TABLE :\"schema\".orders ADD COLUMN a text DEFAULT :'note';\n"
        + "CREATE INDEX orders_a_idx ON :schema.orders (a);\n"
        + "UPDATE orders SET a = :'value' WHERE id = 1;\n"
        + "SELECT a[1:2], b::int, c[lo:hi], f(p := 1), ':x', $$ :y $$ FROM t;\n"
    )
    analyses, findings = lint_text(text, "m.sql")
    assert [a.text.split(" ADD")[0] for a in analyses if a.text.startswith("ALTER")] == [
        'ALTER TABLE "app".orders'
    ]
    assert "DEFAULT 'it''s'" in analyses[2].text and "ON app.orders" in analyses[3].text
    assert [(f.line, f.rule, f.severity) for f in findings if f.rule.startswith("psql")] == [
        (7, "psql-variable", "info")
    ]
    (unset,) = [f for f in findings if f.rule == "psql-variable"]
    assert unset.message == ":'value' is not set in the file (psql -v value=… sets it): read as 'value'"
    assert (6, "create-index-blocking") in [(f.line, f.rule) for f in findings]
    assert "SELECT a[1:2], b::int, c[lo:hi], f(p := 1)" in analyses[-1].text  # SQL's own colons


def test_a_flyway_or_liquibase_placeholder_is_read_as_a_name_and_said_so() -> None:
    text = (
        PRELUDE
        + "ALTER TABLE ${flyway:defaultSchema}.orders ADD COLUMN a int;\nCREATE INDEX i ON ${schema}.orders (a);\n"
    )
    found = [(f.line, f.rule, f.severity, f.message) for f in lint_text(text, "V2__a.sql")[1]]
    assert (
        3,
        "psql-variable",
        "info",
        "${flyway:defaultSchema} is a placeholder its migration tool fills in:"
        " read as the name flyway_defaultSchema",
    ) in found
    assert (4, "create-index-blocking", "error") in [f[:3] for f in found]


@pytest.mark.pg
def test_catalog_mode_does_not_measure_a_file_whose_names_it_would_guess(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        found = lint_text(PRELUDE + "CREATE INDEX i ON ${schema}.orders (id);\n", conn=conn)[1]
    rules = [(f.rule, f.severity) for f in found]
    assert ("create-index-blocking", "error") in rules and ("measured", "error") not in rules
    (note,) = [f for f in found if f.rule == "catalog-mode"]
    assert note.message == "catalog mode did not measure: ${schema} would be guessed"

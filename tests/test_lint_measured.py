"""The lint corpus labelled by measurement, and the probe that measures (``zdm_runbook.lint.probe``).

Every case of ``tests/lint_corpus.py`` runs on a fresh database with rows, on PostgreSQL 18 and 15,
through the probe; its stored label must be what the measurement says. A label written by hand
that PostgreSQL contradicts fails here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql as psql

from tests.conftest import available_servers, server_dsn
from zdm_runbook.lint.probe import Probe
from zdm_runbook.lint.verdicts import judge

from .lint_corpus import CORPUS, SETUP
from .lint_measure import OLD_APP, PRELUDE, measure, scratch, unsafe

pytestmark = pytest.mark.pg


@pytest.mark.parametrize("server", available_servers())
def test_every_corpus_label_is_what_postgresql_measurably_does(
    server: str, request: pytest.FixtureRequest
) -> None:
    admin = server_dsn(request.config, server)

    def check(case: tuple[str, bool]) -> str | None:
        sql, label = case
        verdicts = measure(admin, sql, SETUP.get(sql, ""))
        if unsafe(verdicts) == label:
            return None
        reasons = [r for v in verdicts for r in v.reasons]
        return f"{'unsafe' if label else 'safe'} in the corpus, measured otherwise: {sql} {reasons}"

    measure(admin, "SELECT 1")  # the template database, made once before the cases run side by side
    with ThreadPoolExecutor(4) as pool:  # each case has its own database: they run side by side
        wrong = [w for w in pool.map(check, CORPUS) if w]
    assert wrong == []


@pytest.fixture
def shop(request: pytest.FixtureRequest) -> str:
    with scratch(server_dsn(request.config, "primary")) as dsn:
        yield dsn


def _run(dsn: str, text: str, app: bool = False) -> list:  # type: ignore[type-arg]
    with Probe(dsn, app=OLD_APP if app else ()) as probe:
        return probe.run_file(text)


def test_a_set_local_outside_a_block_is_measured_to_have_no_effect(shop: str) -> None:
    outside = _run(shop, "SET LOCAL lock_timeout = '1s'; ALTER TABLE orders ADD COLUMN a int;")
    inside = _run(shop, "BEGIN; SET LOCAL lock_timeout = '1s'; ALTER TABLE orders ADD COLUMN b int; COMMIT;")
    assert outside[1].lock_timeout == "0" and inside[2].lock_timeout == "1s"
    assert outside[1].locks == {"orders": "AccessExclusiveLock"} and not outside[1].rewritten
    (verdict,) = judge(outside[1:])
    assert verdict.reasons == [
        "takes AccessExclusiveLock on orders with no lock_timeout in effect: a wait queues every query"
    ]
    assert not judge(inside)[2].unsafe


def test_timestamp_to_timestamptz_is_catalog_only_a_rebuild_or_a_rewrite_as_measured(shop: str) -> None:
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ADD COLUMN a timestamp DEFAULT '2026-01-01', ADD COLUMN b timestamp")
        conn.execute("CREATE INDEX orders_b_idx ON orders (b)")
    text = (
        "SET lock_timeout = '1s'; SET TimeZone = 'UTC';"
        " ALTER TABLE orders ALTER COLUMN a TYPE timestamptz;"  # UTC: the same instants, no index
        " ALTER TABLE orders ALTER COLUMN b TYPE timestamptz;"  # UTC, but an index on it is rebuilt
        " SET TimeZone = 'Europe/Paris'; ALTER TABLE orders ALTER COLUMN a TYPE timestamp;"  # values change
    )
    measured = _run(shop, text)
    plain, indexed, paris = measured[2], measured[3], measured[5]
    assert not plain.rewritten and not plain.scans
    assert not indexed.rewritten and indexed.scans == {"orders": 1}  # the index build reads the table
    assert paris.rewritten == {"orders"}
    verdicts = judge(measured)
    assert not verdicts[2].unsafe
    assert verdicts[3].reasons == [
        "holds AccessExclusiveLock on orders while it scans orders (300 rows read)"
    ]
    assert verdicts[5].reasons[0] == "holds AccessExclusiveLock on orders while it rewrites orders"


def test_what_runs_under_a_lock_held_by_an_earlier_statement_counts(shop: str) -> None:
    text = PRELUDE + "BEGIN; ALTER TABLE orders ADD COLUMN z int; ANALYZE orders; COMMIT;"
    measured = _run(shop, text)
    analyze = measured[4]
    assert analyze.kind == "VacuumStmt" and analyze.locks["orders"] == "AccessExclusiveLock"
    assert analyze.blocks_read["orders"] > 0 and not analyze.scans  # ANALYZE reads, it does not scan
    verdicts = judge(measured)
    assert not verdicts[3].unsafe  # the ADD COLUMN itself: catalog only, lock_timeout set
    assert verdicts[4].reasons == [
        f"holds AccessExclusiveLock on orders while it reads {analyze.blocks_read['orders']} blocks of orders"
    ]


def test_a_statement_that_may_not_run_in_a_block_runs_alone_and_its_lock_is_known(shop: str) -> None:
    measured = _run(shop, PRELUDE + "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);")
    assert measured[2].sqlstate is None and not measured[2].in_block
    assert measured[2].locks == {"orders": "ShareUpdateExclusiveLock"}  # seen, or PostgreSQL's documented one
    assert not judge(measured)[2].unsafe
    failed = _run(shop, "BEGIN; CREATE INDEX CONCURRENTLY orders_x_idx ON orders (total); COMMIT;")
    assert failed[1].sqlstate == "25001" and judge(failed)[1].unsafe


def test_the_old_app_breaking_is_pinned_on_the_statement_that_broke_it(shop: str) -> None:
    text = PRELUDE + (
        "ALTER TABLE orders ADD COLUMN remark text;\n"
        "ALTER TABLE orders DROP COLUMN note;\n"
        "ALTER TABLE customers ALTER COLUMN email SET NOT NULL;\n"
    )
    verdicts = judge(_run(shop, text, app=True))
    assert not verdicts[2].unsafe
    assert verdicts[3].reasons == [
        'the old app breaks: read order: column "note" does not exist [SQLSTATE 42703]',
        'the old app breaks: place order: column "note" of relation "orders" does not exist [SQLSTATE 42703]',
    ]
    # customers.email SET NOT NULL: the scan under the lock, and sign up still works (it gives an email)
    assert (
        verdicts[4].reasons[0].startswith("holds AccessExclusiveLock on customers while it scans customers")
    )
    assert not any("old app" in r for r in verdicts[4].reasons)


def test_catalog_mode_agrees_with_the_measured_labels(request: pytest.FixtureRequest) -> None:
    """Every 6th case (the whole corpus: bench/lint_vs_squawk.py), linted in catalog mode with the
    case's schema, rows and setup as the live database, and the old app's statements."""
    from zdm_runbook.lint.linter import lint_text  # noqa: PLC0415

    admin = server_dsn(request.config, "primary")
    wrong = []
    sample = CORPUS[::6]
    assert sum(label for _, label in sample) >= 15 and sum(not label for _, label in sample) >= 20
    for sql, label in sample:
        with scratch(admin, SETUP.get(sql, "")) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
            _, found = lint_text(PRELUDE + sql + ";\n", "case.sql", 18, conn=conn, app=OLD_APP)
            left = conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'zdm_lint_shadow_%'"
            ).fetchone()
        flagged = any(f.severity == "error" for f in found)
        if flagged != label:
            wrong.append((sql, [f.message for f in found if f.severity == "error"]))
        assert left == (0,)
    assert wrong == []


def test_catalog_mode_refreshes_copied_matviews_and_asks_the_planner_about_whole_table_writes(
    shop: str,
) -> None:
    from zdm_runbook.lint.linter import lint_text  # noqa: PLC0415

    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute(
            "CREATE MATERIALIZED VIEW totals AS SELECT customer_id, sum(total) AS total FROM orders GROUP BY 1;"
            " CREATE UNIQUE INDEX totals_key ON totals (customer_id)"
        )

        def errors(text: str) -> list[str]:
            _, found = lint_text(PRELUDE + text, "case.sql", 18, conn=conn)
            return [f.message for f in found if f.severity == "error"]

        assert errors("REFRESH MATERIALIZED VIEW CONCURRENTLY totals;") == []  # it runs on the copy too
        assert errors("REFRESH MATERIALIZED VIEW totals;")[-1].startswith(
            "holds AccessExclusiveLock on totals while it rewrites totals"
        )
        # 300 rows, analysed: the planner expects id > 0 to match them all, id < 10 a few.
        assert errors("UPDATE orders SET status = 'x' WHERE id > 0;") == [
            "writes about 100% of the rows of orders in one transaction (the planner's estimate on the"
            " live database): it row-locks them all"
        ]
        assert errors("UPDATE orders SET status = 'x' WHERE id < 10;") == []


@pytest.mark.pg(">= 18")  # a VIRTUAL generated column
def test_set_expression_and_renames_the_catalog_binds_by_oid_as_measured(shop: str) -> None:
    """Labelled by measuring: SET EXPRESSION rewrites the table for a STORED generated column and
    not for a VIRTUAL one (18); a renamed enum label, sequence or type breaks the statements that
    name it, while the columns, defaults and triggers bound to it by oid follow it. The rules say
    so: an error for the rewrite (which catalog mode measures away for a virtual column), warnings
    for the renames."""
    from zdm_runbook.lint.linter import lint_text  # noqa: PLC0415

    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE orders ADD COLUMN stored numeric GENERATED ALWAYS AS (total * 2) STORED,"
            " ADD COLUMN virt numeric GENERATED ALWAYS AS (total * 2) VIRTUAL;"
            " CREATE TYPE order_state AS ENUM ('new', 'paid');"
            " CREATE SEQUENCE order_numbers; ALTER TABLE orders ADD COLUMN number bigint DEFAULT nextval('order_numbers')"
        )
    measured = _run(
        shop,
        PRELUDE + "ALTER TABLE orders ALTER COLUMN stored SET EXPRESSION AS (total * 3);"
        " ALTER TABLE orders ALTER COLUMN virt SET EXPRESSION AS (total * 3);",
    )
    assert measured[2].rewritten == {"orders"} and not measured[3].rewritten
    text = PRELUDE + "ALTER TABLE orders ALTER COLUMN stored SET EXPRESSION AS (total * 4);\n"
    (rewrite,) = [f for f in lint_text(text, "m.sql", 18)[1] if f.severity == "error"]
    assert rewrite.rule == "set-expression-rewrite"
    with psycopg.connect(shop, autocommit=True) as conn:
        virtual = PRELUDE + "ALTER TABLE orders ALTER COLUMN virt SET EXPRESSION AS (total * 4);\n"
        assert [
            f.message for f in lint_text(virtual, "m.sql", 18, conn=conn)[1] if f.severity == "error"
        ] == []
        conn.execute(
            "ALTER TYPE order_state RENAME VALUE 'paid' TO 'settled';"
            " ALTER SEQUENCE order_numbers RENAME TO order_nos; ALTER TYPE order_state RENAME TO order_status"
        )
        breaks = {
            "SELECT 'paid'::order_status": psycopg.errors.InvalidTextRepresentation,
            "SELECT nextval('order_numbers')": psycopg.errors.UndefinedTable,
            "SELECT 'new'::order_state": psycopg.errors.UndefinedObject,
        }
        for old_statement, error in breaks.items():
            with pytest.raises(error):
                conn.execute(old_statement)
        row = conn.execute(  # the default's nextval follows the sequence by oid
            "INSERT INTO orders (id) VALUES (100001) RETURNING number"
        ).fetchone()
        assert row == (301,)  # after the 300 rows the ADD COLUMN filled from it
    renames = (
        "ALTER TYPE order_state RENAME VALUE 'paid' TO 'settled';\nALTER SEQUENCE order_numbers RENAME TO order_nos;\n"
        "ALTER TYPE order_state RENAME TO order_status;\n"
    )
    found = [(f.rule, f.severity) for f in lint_text(PRELUDE + renames, "m.sql", 18)[1]]
    assert found == [
        ("rename-enum-value", "warning"),
        ("rename-object", "warning"),
        ("rename-object", "warning"),
    ]


def test_drops_and_revokes_of_what_an_app_names_as_measured(shop: str) -> None:
    """Labelled by measuring: DROP … CASCADE of a type, a function or a sequence drops, unnamed, a
    column with its data, an index and a default that use it (an error); dropping a view or a
    function breaks a statement that names it, and so does a revoked privilege (warnings: the text
    cannot say whether the old app names them)."""
    from zdm_runbook.lint.linter import lint_text  # noqa: PLC0415

    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute(
            "CREATE TYPE tier AS ENUM ('a', 'b'); ALTER TABLE customers ADD COLUMN tier tier DEFAULT 'a';"
            " CREATE FUNCTION bucket(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 % 10';"
            " CREATE INDEX orders_bucket ON orders (bucket(customer_id));"
            " CREATE SEQUENCE order_numbers; ALTER TABLE orders ADD COLUMN number int;"
            " ALTER TABLE orders ALTER COLUMN number SET DEFAULT nextval('order_numbers');"
            " CREATE VIEW open_orders AS SELECT id FROM orders"
        )
        role = psql.Identifier(f"app_{conn.info.dbname}")  # roles are the server's: one per test database
        conn.execute(psql.SQL("CREATE ROLE {role}; GRANT SELECT ON orders TO {role}").format(role=role))
        conn.execute(
            "DROP TYPE tier CASCADE; DROP FUNCTION bucket(int) CASCADE; DROP SEQUENCE order_numbers CASCADE"
        )
        left = conn.execute(
            "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'tier'"
            " AND NOT attisdropped), to_regclass('orders_bucket') IS NULL,"
            " (SELECT count(*) FROM pg_attrdef WHERE adrelid = 'orders'::regclass)"
        ).fetchone()
        assert left == (0, True, 0)  # the column with its data, the index and the default: gone
        conn.execute("DROP VIEW open_orders")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT id FROM open_orders")
        conn.execute(psql.SQL("REVOKE SELECT ON orders FROM {}").format(role))
        with conn.transaction(force_rollback=True):
            conn.execute(psql.SQL("SET LOCAL ROLE {}").format(role))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT id FROM orders")
        conn.execute(psql.SQL("DROP OWNED BY {role}; DROP ROLE {role}").format(role=role))
    text = (
        "DROP TYPE tier CASCADE;\nDROP FUNCTION bucket(int) CASCADE;\nDROP SEQUENCE order_numbers CASCADE;\n"
        "DROP VIEW open_orders;\nREVOKE SELECT ON orders FROM app;\n"
    )
    found = [
        (f.line - PRELUDE.count("\n"), f.rule, f.severity) for f in lint_text(PRELUDE + text, "m.sql", 18)[1]
    ]
    assert found == [
        (1, "drop-cascade", "error"),
        (1, "drop-object", "warning"),
        (2, "drop-cascade", "error"),
        (2, "drop-object", "warning"),
        (3, "drop-cascade", "error"),
        (3, "drop-object", "warning"),
        (4, "drop-object", "warning"),
        (5, "revoke", "warning"),
    ]

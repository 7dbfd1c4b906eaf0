"""zdm lint with a connection: the catalog corrects what text alone cannot know (18, and 15)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from zdm_runbook.lint.linter import lint_text

from .helpers import columns, scalar
from .test_cli import zdm

pytestmark = pytest.mark.pg
PRELUDE = "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n"
SCHEMA = """
CREATE TABLE orders (
    id int PRIMARY KEY, note varchar(20), qty int, status text, code text NOT NULL, memo varchar(20)
);
INSERT INTO orders VALUES (1, 'a', 1, 'new', 'x', 'm');
ALTER TABLE orders ADD CONSTRAINT orders_status_nn CHECK (status IS NOT NULL);
CREATE VIEW open_orders AS SELECT id, note FROM orders;
"""


def _rules(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> dict[str, str]:
    version_row = conn.execute("SHOW server_version_num").fetchone()
    version = int(str(version_row[0])) // 10000 if version_row else 18
    _, findings = lint_text(PRELUDE + statement, "m.sql", version, conn=conn)
    return {f.rule: f.message for f in findings}


@pytest.fixture
def shop(any_pg_db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
        yield conn


@pytest.mark.parametrize(
    ("statement", "cheap"),
    [
        ("ALTER TABLE orders ALTER COLUMN note TYPE text", True),
        ("ALTER TABLE orders ALTER COLUMN note TYPE varchar(50)", True),
        ("ALTER TABLE orders ALTER COLUMN note TYPE varchar(5)", False),
        ("ALTER TABLE orders ALTER COLUMN qty TYPE bigint", False),
        ("ALTER TABLE orders ALTER COLUMN status TYPE varchar(10)", False),
    ],
)
def test_type_changes_are_probed_on_the_server(
    shop: psycopg.Connection[tuple[object, ...]], statement: str, cheap: bool
) -> None:
    before = columns(shop.info.dsn, "orders")
    rules = _rules(shop, statement)
    assert ("alter-column-type-catalog-only" in rules) == cheap
    assert ("alter-column-type" in rules) == (not cheap)
    assert columns(shop.info.dsn, "orders") == before, "the probe never touches the real table"
    assert scalar(shop.info.dsn, "SELECT count(*) FROM pg_class WHERE relname = 'zdm_lint_probe'") == 0


def test_a_validated_not_null_check_makes_set_not_null_cheap(
    shop: psycopg.Connection[tuple[object, ...]],
) -> None:
    assert "set-not-null-proven" in _rules(shop, "ALTER TABLE orders ALTER COLUMN status SET NOT NULL")
    assert "set-not-null-scan" in _rules(shop, "ALTER TABLE orders ALTER COLUMN note SET NOT NULL")


@pytest.mark.parametrize(
    ("setup", "scans"),
    [
        ("", True),
        ("ALTER TABLE keys ALTER COLUMN id SET NOT NULL", False),
        ("ALTER TABLE keys ADD CONSTRAINT keys_id_nn CHECK (id IS NOT NULL)", False),
    ],
    ids=["nullable", "not-null", "proven-by-check"],
)
def test_primary_key_using_index_scans_unless_its_columns_are_not_null(
    shop: psycopg.Connection[tuple[object, ...]], setup: str, scans: bool
) -> None:
    """Labelled by PostgreSQL itself: at DEBUG1 it says "verifying table" when it scans for the
    NOT NULL a primary key needs, and the lint's verdict must agree."""
    shop.execute("CREATE TABLE keys (id int, v text); CREATE UNIQUE INDEX keys_id ON keys (id)")  # type: ignore[arg-type]
    if setup:
        shop.execute(setup.encode())
    statement = "ALTER TABLE keys ADD CONSTRAINT keys_pkey PRIMARY KEY USING INDEX keys_id"
    rules = _rules(shop, statement)
    assert ("primary-key-using-index-scan" in rules) == scans
    assert ("primary-key-using-index-proven" in rules) == (not scans)
    said: list[str] = []
    shop.add_notice_handler(lambda d: said.append(d.message_primary or ""))
    with shop.transaction(force_rollback=True):
        shop.execute("SET LOCAL client_min_messages = debug1")
        shop.execute(statement.encode())
    assert ('verifying table "keys"' in said) == scans, said


def test_row_security_hides_the_rows_from_the_old_app_as_the_warning_says(
    shop: psycopg.Connection[tuple[object, ...]],
) -> None:
    """What the warning claims, measured: once enabled with no policy, a role with the table's
    grants reads no rows and cannot insert; the owner still can; DISABLE has no warning."""
    rules = _rules(shop, "ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
    assert "enable-row-security" in rules and "the table's owner" in rules["enable-row-security"]
    assert "enable-row-security" in _rules(shop, "ALTER TABLE orders FORCE ROW LEVEL SECURITY")
    assert "enable-row-security" not in _rules(shop, "ALTER TABLE orders DISABLE ROW LEVEL SECURITY")
    role = f"zdm_rls_{abs(hash(shop.info.dsn)) % 10**8}"
    shop.execute(f"CREATE ROLE {role}; GRANT SELECT, INSERT ON orders TO {role}".encode())
    try:
        with shop.transaction(force_rollback=True):
            shop.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
            assert shop.execute("SELECT count(*) FROM orders").fetchone() == (1,), "the owner still reads"
            shop.execute(f"SET LOCAL ROLE {role}".encode())
            assert shop.execute("SELECT count(*) FROM orders").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                shop.execute("INSERT INTO orders (id, code) VALUES (2, 'y')")
    finally:
        shop.execute(f"DROP OWNED BY {role}; DROP ROLE {role}".encode())


def test_if_not_exists_skips_an_invalid_index_and_the_catalog_says_when_one_is_there(
    shop: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Measured: a failed concurrent build leaves an INVALID index; CREATE INDEX CONCURRENTLY IF NOT
    EXISTS of that name then succeeds and changes nothing. The lint says so from the catalog."""
    statement = "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS dup_x ON dup (x)"
    shop.execute("CREATE TABLE dup (x int); INSERT INTO dup VALUES (1), (1)")  # type: ignore[arg-type]
    assert rules_severity(shop, statement) == "info", "no index of that name yet"
    with pytest.raises(psycopg.errors.UniqueViolation):
        shop.execute("CREATE UNIQUE INDEX CONCURRENTLY dup_x ON dup (x)")
    shop.execute("DELETE FROM dup WHERE ctid = (SELECT max(ctid) FROM dup)")
    assert rules_severity(shop, statement) == "error"
    shop.execute(statement.encode())  # succeeds: skipped with a NOTICE
    assert shop.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'dup_x'::regclass"
    ).fetchone() == (False,)


def rules_severity(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> str:
    version_row = conn.execute("SHOW server_version_num").fetchone()
    version = int(str(version_row[0])) // 10000 if version_row else 18
    _, findings = lint_text(PRELUDE + statement, "m.sql", version, conn=conn)
    (found,) = [f for f in findings if f.rule == "concurrent-index-if-not-exists"]
    return found.severity


def test_dependents_of_a_dropped_or_renamed_column_are_named(
    shop: psycopg.Connection[tuple[object, ...]],
) -> None:
    assert (
        "note is used by view open_orders"
        in _rules(shop, "ALTER TABLE orders DROP COLUMN note")["drop-column"]
    )
    renamed = _rules(shop, "ALTER TABLE orders RENAME COLUMN note TO remark")["rename"]
    assert renamed.endswith("note is used by view open_orders")
    assert "is used by" not in _rules(shop, "ALTER TABLE orders DROP COLUMN qty")["drop-column"]


def test_a_serial_columns_sequence_is_named_as_one_and_the_measured_finding_names_the_table(
    shop: psycopg.Connection[tuple[object, ...]],
) -> None:
    shop.execute(
        "CREATE TABLE audit (id serial PRIMARY KEY, what text); INSERT INTO audit (what) VALUES ('a')"
    )
    _, findings = lint_text("ALTER TABLE audit ALTER COLUMN id TYPE bigint", "m.sql", conn=shop)
    (typed,) = [f for f in findings if f.rule == "alter-column-type"]
    assert "constraint audit_pkey" in typed.message and "index audit_id_seq" not in typed.message
    # The statement also takes AccessShareLock on the sequence; the finding is about the table.
    measured = [(f.relation, f.lock_mode) for f in findings if f.rule == "measured"]
    assert measured and set(measured) == {("audit", "AccessExclusiveLock")}


def test_zdm_lint_with_dsn_env(shop: psycopg.Connection[tuple[object, ...]], tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    path = Path(str(tmp_path)) / "widen.sql"
    path.write_text(PRELUDE + "ALTER TABLE orders ALTER COLUMN memo TYPE text;\n")
    without = zdm("lint", str(path))
    assert without.returncode == 1
    with_catalog = zdm("lint", str(path), "--dsn-env", "SHOP_DSN", env={"SHOP_DSN": shop.info.dsn})
    assert with_catalog.returncode == 0, with_catalog.stdout + with_catalog.stderr
    assert "info alter-column-type-catalog-only: binary-coercible on this server" in with_catalog.stdout
    # note is used by a view: the rules call the same change catalog-only, the shadow copy measures
    # that PostgreSQL refuses it.
    path.write_text(PRELUDE + "ALTER TABLE orders ALTER COLUMN note TYPE text;\n")
    measured = zdm("lint", str(path), "--dsn-env", "SHOP_DSN", env={"SHOP_DSN": shop.info.dsn})
    assert measured.returncode == 1
    assert (
        "error measured: fails as written: cannot alter type of a column used by a view or rule [SQLSTATE 0A000]"
        in measured.stdout
    )


MIXED_CASE = """
CREATE TABLE "Orders" (id int PRIMARY KEY, "Note" varchar(20), "Status" text);
ALTER TABLE "Orders" ADD CONSTRAINT orders_status_nn CHECK ("Status" IS NOT NULL);
CREATE VIEW "OpenOrders" AS SELECT id, "Note" FROM "Orders";
"""


def test_a_mixed_case_table_is_found_not_case_folded(any_pg_db: str) -> None:
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(MIXED_CASE)  # type: ignore[arg-type]
        dropped = _rules(conn, 'ALTER TABLE "Orders" DROP COLUMN "Note"')["drop-column"]
        assert 'Note is used by view "OpenOrders"' in dropped
        assert "alter-column-type-catalog-only" in _rules(conn, 'ALTER TABLE "Orders" ALTER "Note" TYPE text')
        assert "set-not-null-proven" in _rules(conn, 'ALTER TABLE "Orders" ALTER "Status" SET NOT NULL')


def test_what_the_catalog_cannot_answer_reads_as_unknown_never_as_safe(any_pg_db: str) -> None:
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(MIXED_CASE)  # type: ignore[arg-type]
        # Unquoted, "Orders" folds to orders, which does not exist: no answer is not "nothing uses it".
        dropped = _rules(conn, "ALTER TABLE Orders DROP COLUMN note")["drop-column"]
        assert "what uses note is unknown" in dropped and "is used by" not in dropped
        assert "alter-column-type" in _rules(conn, "ALTER TABLE Orders ALTER note TYPE text")
        assert "set-not-null-scan" in _rules(conn, "ALTER TABLE Orders ALTER status SET NOT NULL")


SHOP_APP = """
-- params: {"id": 1}
SELECT id, note, qty, status, code FROM orders WHERE id = %(id)s;
-- params: {"id": 2, "note": "b"}
INSERT INTO orders (id, note, qty, status, code) VALUES (%(id)s, %(note)s, 1, 'new', 'y');
UPDATE orders SET status = 'paid' WHERE id = %(id)s;
"""


def _lint(path: object, dsn: str, *extra: str) -> tuple[int, str]:
    done = zdm("lint", str(path), "--dsn-env", "SHOP_DSN", *extra, env={"SHOP_DSN": dsn})
    return done.returncode, done.stdout + done.stderr


def test_catalog_mode_measures_on_a_shadow_copy_and_leaves_the_live_database_alone(
    shop: psycopg.Connection[tuple[object, ...]], tmp_path: object
) -> None:
    from pathlib import Path  # noqa: PLC0415

    dsn = shop.info.dsn
    app = Path(str(tmp_path)) / "old-app.sql"
    app.write_text(SHOP_APP)
    before = columns(dsn, "orders"), scalar(dsn, "SELECT relfilenode FROM pg_class WHERE relname = 'orders'")
    path = Path(str(tmp_path)) / "m.sql"

    def lint(body: str, *extra: str) -> tuple[int, str]:
        path.write_text(PRELUDE + body)
        return _lint(path, dsn, *extra)

    # A rewrite by the rules; measured: the table is logged already, nothing is rewritten.
    code, out = lint("ALTER TABLE orders SET LOGGED;\n")
    assert code == 0 and "info rewrite: measured on a shadow copy, not unsafe" in out, out
    # SET LOCAL outside a block: the rules see a lock_timeout, the measurement sees none in effect.
    code, out = _lint_raw(
        path, dsn, "SET LOCAL lock_timeout = '1s';\nALTER TABLE orders ADD COLUMN extra int;\n"
    )
    assert (
        code == 1
        and "error measured: takes AccessExclusiveLock on orders with no lock_timeout in effect" in out
    )
    # Dropping a column the old app reads: measured with its statements, naming the statement.
    code, out = lint("ALTER TABLE orders DROP COLUMN qty;\n", "--app-queries", str(app))
    assert (
        code == 1 and "error measured: the old app breaks: " in out and 'column "qty" does not exist' in out
    )
    # Dropping one it does not use is fine once the app is known; without it, the rule stays.
    code, out = lint("ALTER TABLE orders DROP COLUMN memo;\n", "--app-queries", str(app))
    assert code == 0, out
    assert lint("ALTER TABLE orders DROP COLUMN memo;\n")[0] == 1
    # A NOT NULL column whose INSERT by the old app now fails with its sample values.
    code, out = lint(
        "ALTER TABLE orders ADD COLUMN region text NOT NULL DEFAULT 'eu';\nALTER TABLE orders ALTER COLUMN region DROP DEFAULT;\n",
        "--app-queries",
        str(app),
    )
    assert code == 1 and 'null value in column "region"' in out, out
    # The live table was never changed, and no shadow database is left.
    assert (
        columns(dsn, "orders"),
        scalar(dsn, "SELECT relfilenode FROM pg_class WHERE relname = 'orders'"),
    ) == before
    assert scalar(dsn, "SELECT count(*) FROM pg_database WHERE datname LIKE 'zdm_lint_shadow_%'") == 0


def _lint_raw(path: object, dsn: str, body: str) -> tuple[int, str]:
    from pathlib import Path  # noqa: PLC0415

    Path(str(path)).write_text(body)
    return _lint(path, dsn)


def test_app_queries_need_a_database_and_name_their_problems(tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    sql_file = Path(str(tmp_path)) / "m.sql"
    sql_file.write_text(PRELUDE + "ALTER TABLE orders ADD COLUMN c int;\n")
    app = Path(str(tmp_path)) / "app.sql"
    app.write_text("SELECT 1;\n")
    done = zdm("lint", str(sql_file), "--app-queries", str(app))
    assert done.returncode == 2 and "--app-queries" in done.stderr and "needs --dsn-env" in done.stderr
    app.write_text(
        'SELECT id FROM t WHERE id = %(id)s;\nCREATE TABLE x (id int);\n-- params: {"id": }\nSELECT %(id)s;\n'
    )
    done = zdm(
        "lint", str(sql_file), "--app-queries", str(app), "--dsn-env", "NOPE", env={"NOPE": "dbname=x"}
    )
    assert done.returncode == 2
    assert "app.sql:2: CreateStmt is not an app statement" in done.stderr
    assert "app.sql:4: params is not JSON" in done.stderr


def test_without_app_queries_pg_stat_statements_says_what_the_app_runs(
    shop: psycopg.Connection[tuple[object, ...]], tmp_path: object
) -> None:
    from pathlib import Path  # noqa: PLC0415

    dsn = shop.info.dsn
    shop.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    shop.execute("SELECT pg_stat_statements_reset()")
    with psycopg.connect(dsn, autocommit=True) as app:  # the old app, as the server saw it
        for i in range(3):
            app.execute("SELECT id, qty, status FROM orders WHERE id = %s", [i])
    path = Path(str(tmp_path)) / "m.sql"
    path.write_text(PRELUDE + "ALTER TABLE orders DROP COLUMN qty;\n")
    code, out = _lint(path, dsn)
    assert code == 1
    assert "error measured: the old app breaks: pg_stat_statements: SELECT id, qty, status FROM orders" in out
    assert 'column "qty" does not exist' in out
    path.write_text(PRELUDE + "ALTER TABLE orders DROP COLUMN memo;\n")  # nothing the app runs uses it
    code, out = _lint(path, dsn)
    assert code == 0, out
    assert "info drop-column: measured on a shadow copy, not unsafe" in out


def test_catalog_mode_measures_on_a_server_that_asks_for_a_password(tmp_path: object) -> None:
    """The shadow copy is reached with the live connection's password (pg_dump and psql get it in
    PGPASSWORD, the probe in memory); the password shows nowhere in what zdm lint prints."""
    from pathlib import Path  # noqa: PLC0415

    from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir  # noqa: PLC0415

    folder = Path(str(tmp_path))
    server = LocalServer(data_dir=folder / "pg", bin_dir=embedded_bin_dir())
    admin = server.start()
    secret = "Sh4dow-pw-91x"  # noqa: S105 - a test password, looked for in the output
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE linter LOGIN CREATEDB PASSWORD '{secret}'")  # type: ignore[arg-type]
            conn.execute("CREATE DATABASE shop OWNER linter")
            hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
            hba.write_text("local all linter scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        dsn = psycopg.conninfo.make_conninfo(admin, user="linter", dbname="shop", password=secret)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)  # type: ignore[arg-type]
        without = psycopg.conninfo.make_conninfo(admin, user="linter", dbname="shop")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(without).close()  # the server does ask for it
        path = folder / "m.sql"
        path.write_text(PRELUDE + "ALTER TABLE orders SET LOGGED;\n")
        code, out = _lint(path, dsn)
        assert code == 0 and "info rewrite: measured on a shadow copy, not unsafe" in out, out
        assert secret not in out
    finally:
        server.destroy()


def test_a_key_or_a_column_that_holds_one_widened_to_bigint_is_pointed_to_change_key_type(
    any_pg_db: str,
) -> None:
    """The generic advice (add a new column, drop the old one) would drop a key or a foreign key with
    the old column: for those the catalog names change_key_type's spec line; not for a plain column."""
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE customers (id serial PRIMARY KEY, name text);"
            " CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, qty int);"
            " INSERT INTO customers (name) SELECT 'c' FROM generate_series(1, 2000);"
            " INSERT INTO orders SELECT g, 1 + g % 2000, g FROM generate_series(1, 2000) g;"
            " CREATE TABLE visits (id int, customer_id int REFERENCES customers, at date, PRIMARY KEY (id, at))"
            " PARTITION BY RANGE (at);"
            " CREATE TABLE visits_1 PARTITION OF visits FOR VALUES FROM ('2020-01-01') TO ('2030-01-01');"
            " INSERT INTO visits SELECT g, 1 + g % 2000, DATE '2024-01-01' + g % 300 FROM generate_series(1, 2000) g;"
            " CREATE TABLE shards (id int PRIMARY KEY) PARTITION BY RANGE (id);"
            " CREATE TABLE shards_1 PARTITION OF shards FOR VALUES FROM (0) TO (100000);"
            " INSERT INTO shards SELECT generate_series(1, 2000);"
            " ANALYZE"
        )
        advice = {}
        for column, table in (
            ("id", "customers"),
            ("customer_id", "orders"),
            ("qty", "orders"),
            ("customer_id", "visits"),
            ("id", "shards"),
        ):
            version_row = conn.execute("SHOW server_version_num").fetchone()
            version = int(str(version_row[0])) // 10000 if version_row else 18
            _, findings = lint_text(
                f"{PRELUDE}ALTER TABLE {table} ALTER COLUMN {column} TYPE bigint;",
                "m.sql",
                version,
                conn=conn,
            )
            (finding,) = [f for f in findings if f.rule == "alter-column-type"]
            assert finding.severity == "error", finding  # a rewrite of a table with rows
            advice[f"{table}.{column}"] = finding.safe_alternative
    assert advice["customers.id"].startswith(
        "expand and contract that keeps the name: change_key_type: {table: public.customers, column: id}"
        " (id is the primary key; referenced by orders.orders_customer_id_fkey, visits.visits_customer_id_fkey;"
        " fed by sequence"
    )
    assert advice["orders.customer_id"] == (
        "expand and contract that keeps the name: change_key_type: {table: public.orders, column: customer_id}"
        " (customer_id holds a key (orders_customer_id_fkey -> customers): a new column's contract would drop"
        " its foreign key)"
    )
    assert "change_key_type" not in advice["orders.qty"]
    assert "change_key_type" not in advice["shards.id"]  # a partitioned table's own key: refused there
    assert advice["visits.customer_id"] == (  # partitioned: change_key_type widens a holder there too
        "expand and contract that keeps the name: change_key_type: {table: public.visits, column: customer_id}"
        " (customer_id holds a key (visits_customer_id_fkey -> customers): a new column's contract would drop"
        " its foreign key)"
    )

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
CREATE TABLE orders (id int PRIMARY KEY, note varchar(20), qty int, status text, code text NOT NULL);
INSERT INTO orders VALUES (1, 'a', 1, 'new', 'x');
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


def test_zdm_lint_with_dsn_env(shop: psycopg.Connection[tuple[object, ...]], tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    path = Path(str(tmp_path)) / "widen.sql"
    path.write_text(PRELUDE + "ALTER TABLE orders ALTER COLUMN note TYPE text;\n")
    without = zdm("lint", str(path))
    assert without.returncode == 1
    with_catalog = zdm("lint", str(path), "--dsn-env", "SHOP_DSN", env={"SHOP_DSN": shop.info.dsn})
    assert with_catalog.returncode == 0, with_catalog.stdout + with_catalog.stderr
    assert "info alter-column-type-catalog-only: binary-coercible on this server" in with_catalog.stdout


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

"""What ``rename_column`` and ``change_type`` carry from the column their contract drops, on a real
server (18, and 15 where installed): the old column's default reaches the new one, so the new
app's INSERT that leaves the column out still works after contract; and what cannot be carried is
refused by the catalog check, naming the field, before anything runs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import psycopg
import pytest

from zdm_runbook.inspect.left_behind import left_behind_warnings
from zdm_runbook.inspect.preflight import drops_report
from zdm_runbook.notebook import runner
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.catalog import check_change
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import apply_phase, fingerprint, scalar

TABLE = """
CREATE TABLE items (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  status text NOT NULL DEFAULT 'new',
  qty int DEFAULT 1,
  price_cents int DEFAULT 250,
  made_at timestamptz DEFAULT now(),
  base int DEFAULT 3,
  twice int GENERATED ALWAYS AS (base * 2) STORED
);
INSERT INTO items (status, qty, price_cents) SELECT 'paid', g, g * 100 FROM generate_series(1, 50) g;
COMMENT ON COLUMN items.status IS 'where the item is in its life';
ALTER TABLE items ALTER COLUMN status SET STATISTICS 700;
ALTER TABLE items ALTER COLUMN qty SET (n_distinct = -0.25);
"""

SPEC = """
change: items-shape
operations:
  - rename_column: {table: items, from: status, to: state, type: text}
  - change_type: {table: items, column: qty, new_column: quantity, type: bigint,
                  using: "qty::bigint", reverse: "quantity::int"}
  - change_type: {table: items, column: price_cents, new_column: price, type: "numeric(10,2)",
                  using: "price_cents / 100.0", reverse: "(price * 100)::int", default: "2.50"}
  - rename_column: {table: items, from: made_at, to: created_at, type: timestamptz}
"""


def _defaults(dsn: str) -> dict[str, str | None]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name, column_default FROM information_schema.columns"
            " WHERE table_name = 'items' ORDER BY ordinal_position"
        ).fetchall()
    return {str(name): default for name, default in rows}


def test_the_old_columns_default_reaches_the_new_one_in_contract(any_pg_db: str) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLE)
        change = parse_change(SPEC)
        assert check_change(conn, change) == []
    plan = build_plan(change)
    for phase in (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH):
        apply_phase(dsn, plan, phase)
        # Not before contract: the old app still writes, and a default on the new column would
        # fill it on the old app's INSERTs, which the trigger then leaves apart from the old one.
        assert {
            k: v for k, v in _defaults(dsn).items() if k in ("state", "quantity", "price", "created_at")
        } == {
            "state": None,
            "quantity": None,
            "price": None,
            "created_at": None,
        }
    with psycopg.connect(dsn, autocommit=True) as conn:  # the old app, between switch and contract
        old = conn.execute("INSERT INTO items (status) VALUES ('paid') RETURNING id").fetchone()
        assert old is not None
        assert conn.execute("SELECT state, quantity, price FROM items WHERE id = %s", old).fetchone() == (
            "paid",
            1,
            2.5,
        )
    result = apply_phase(dsn, plan, Phase.CONTRACT)
    assert set(result.values()) == {"applied"}
    defaults = _defaults(dsn)
    assert defaults["state"] == "'new'::text"
    assert defaults["quantity"] == "(1)::bigint"
    assert defaults["price"] == "2.50"
    assert defaults["created_at"] == "now()"
    assert "status" not in defaults and "qty" not in defaults
    # The new app's INSERT that leaves every column out: each gets what the old column gave.
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO items DEFAULT VALUES RETURNING state, quantity, price, created_at IS NOT NULL"
        ).fetchone()
    assert row is not None and tuple(map(str, row)) == ("new", "1", "2.50", "True")
    assert set(apply_phase(dsn, plan, Phase.CONTRACT).values()) == {"skipped"}


def test_the_old_columns_comment_statistics_target_and_options_reach_the_new_one_in_expand(
    any_pg_db: str,
) -> None:
    """A DBA's statistics target and n_distinct keep the planner's estimates on the column the new
    app reads; a comment documents it. Contract would drop them with the old column."""
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(TABLE)
    apply_phase(any_pg_db, build_plan(parse_change(SPEC)), Phase.EXPAND)
    with psycopg.connect(any_pg_db) as conn:
        rows = conn.execute(
            "SELECT attname, col_description(attrelid, attnum), coalesce(attstattarget, -1), attoptions"
            " FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname IN ('state', 'quantity', 'price')"
            " ORDER BY attname"
        ).fetchall()
    assert rows == [
        ("price", None, -1, None),
        ("quantity", None, -1, ["n_distinct=-0.25"]),
        ("state", "where the item is in its life", 700, None),
    ]


def test_a_default_set_on_the_new_column_is_kept_and_late_privileges_are_carried(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(TABLE)
    plan = build_plan(parse_change(SPEC))
    for phase in (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH):
        apply_phase(db, plan, phase)
    with psycopg.connect(db, autocommit=True) as conn:  # the DBA's own choices, after expand
        role = psycopg.sql.Identifier(f"reader_{conn.info.dbname}")  # roles are the server's
        conn.execute("ALTER TABLE items ALTER COLUMN state SET DEFAULT 'draft'")
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {r}; GRANT SELECT (id, status) ON items TO {r}").format(r=role)
        )
    apply_phase(db, plan, Phase.CONTRACT)
    assert _defaults(db)["state"] == "'draft'::text"
    with psycopg.connect(db, autocommit=True) as conn:  # the grant made on status reached state
        conn.execute(psycopg.sql.SQL("SET ROLE {r}").format(r=role))
        assert conn.execute("SELECT count(state) FROM items").fetchone() == (50,)
        conn.execute("RESET ROLE")
        conn.execute(psycopg.sql.SQL("DROP OWNED BY {r}; DROP ROLE {r}").format(r=role))


@pytest.mark.parametrize(
    ("operation", "field", "words"),
    [
        (  # using computes: what the default becomes is not derivable
            'change_type: {table: items, column: price_cents, new_column: price, type: "numeric(10,2)",'
            ' using: "price_cents / 100.0", reverse: "(price * 100)::int"}',
            "operations[0].change_type.default",
            "has DEFAULT 250",
        ),
        (  # the spec's default must be valid in the new type
            "change_type: {table: items, column: qty, new_column: quantity, type: bigint,"
            ' using: "qty::bigint", reverse: "quantity::int", default: "\'many\'"}',
            "operations[0].change_type.default",
            "many",
        ),
        (  # the old default does not cast to the new type
            "change_type: {table: items, column: made_at, new_column: made_on, type: int,"
            ' using: "extract(epoch from made_at)::int", reverse: "to_timestamp(made_on)"}',
            "operations[0].change_type.default",
            "DEFAULT now()",
        ),
        (  # a generated column: the new one would be plain, NULL for the new app's INSERTs
            "rename_column: {table: items, from: twice, to: doubled, type: int}",
            "operations[0].rename_column.from",
            "is generated ((base * 2))",
        ),
        (
            "change_type: {table: items, column: twice, new_column: twice8, type: bigint,"
            ' using: "twice::bigint", reverse: "twice8::int"}',
            "operations[0].change_type.column",
            "is generated",
        ),
        (  # a key: contract would drop it, and the identity that feeds it
            "rename_column: {table: items, from: id, to: item_id, type: bigint}",
            "operations[0].rename_column.from",
            "the primary key",
        ),
    ],
)
def test_what_cannot_be_carried_is_refused_before_anything_runs(
    db: str, operation: str, field: str, words: str
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(TABLE)
        before = fingerprint(db)
        problems = check_change(conn, parse_change(f"change: c1\noperations:\n  - {operation}\n"))
    assert [p.path for p in problems] == [field], problems
    assert words in problems[0].message
    assert fingerprint(db) == before
    assert scalar(db, "SELECT count(*) FROM items") == 50


CUSTOMERS = """
CREATE TABLE customers (id bigint PRIMARY KEY, mail text NOT NULL DEFAULT '', name text,
                        CONSTRAINT mail_has_at CHECK (mail = '' OR mail LIKE '%@%'));
INSERT INTO customers SELECT g, 'c' || g || '@example.com', 'n' || g FROM generate_series(1, 200) g;
CREATE INDEX customers_mail_idx ON customers (mail);
CREATE INDEX customers_named_mail_idx ON customers (lower(mail)) WHERE name IS NOT NULL;
CREATE STATISTICS customers_mail_name ON mail, name FROM customers;
CREATE VIEW active_customers AS SELECT id, mail FROM customers WHERE name IS NOT NULL;
"""

RENAME_MAIL = """
change: customers-email
operations:
  - rename_column: {table: customers, from: mail, to: email, type: text}
  - create_index: {table: customers, name: customers_email_idx, columns: [email]}
  - drop_index: {name: customers_named_mail_idx}
"""


def test_what_a_replaced_column_leaves_behind_is_warned_of_unless_the_spec_takes_care_of_it(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(CUSTOMERS)
        reasons, frame = left_behind_warnings(conn, parse_change(RENAME_MAIL).operations)
        bare = parse_change(RENAME_MAIL.split("  - create_index", maxsplit=1)[0])
        all_reasons, _ = left_behind_warnings(conn, bare.operations)
    said = "\n".join(map(str, reasons))
    # Taken care of: the index re-created on email (create_index), the partial one dropped by name.
    assert "customers_mail_idx" not in said and "customers_named_mail_idx" not in said
    # Left: the check and the statistics (dropped with mail), the view (it makes the drop fail).
    assert sorted(frame["contract"]) == ["drops it", "drops it", "fails"]
    assert "contract drops constraint mail_has_at" in said and "add_check" in said
    assert "statistics object customers_mail_name" in said
    assert "view active_customers uses public.customers.mail: contract's DROP COLUMN fails" in said
    assert all(r.level == "warn" for r in reasons)
    # Without the spec's lines, both indexes are named, with their definitions and the line to paste.
    everything = "\n".join(map(str, all_reasons))
    assert "CREATE INDEX customers_mail_idx ON public.customers USING btree (mail)" in everything
    assert "drop_index: {name: customers_named_mail_idx}" in everything
    assert len(all_reasons) == 5


def test_contract_is_a_no_go_while_a_view_uses_the_old_column(
    db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(CUSTOMERS)
    monkeypatch.setenv("ZDM_DSN", db)
    spec = tmp_path / "change.yaml"
    spec.write_text(RENAME_MAIL)
    archive, sign = tmp_path / "archive", {"signoff_by": "alice", "signoff_ticket": "CHG-1"}
    contract = {"deploy_cycle_override": "test: no old app runs", "usage_window": "0s"}
    expand = runner.run("expand", spec, sign, archive)
    assert expand.exit_code == 0, expand
    assert "view active_customers uses public.customers.mail" in _text(expand.notebook)
    for phase in ("migrate", "switch"):
        assert runner.run(phase, spec, sign, archive).exit_code == 0
    before = fingerprint(db)
    refused = runner.run("contract", spec, {**sign, **contract}, archive)
    assert refused.exit_code == 3, refused
    assert (
        "[no-go] dropping public.customers.mail fails while view active_customers uses it" in refused.message
    )
    assert refused.message.count("view active_customers") == 1  # said once: not warned of again
    assert fingerprint(db) == before  # nothing ran: not the drop_index, not the drop of mail
    # The DBA moves the view to the new column; contract then runs, and email keeps mail's default.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE VIEW active_customers AS SELECT id, email AS mail FROM customers"
            " WHERE name IS NOT NULL"
        )
    done = runner.run("contract", spec, {**sign, **contract}, archive)
    assert done.exit_code == 0, done
    said = _text(done.notebook)
    assert "[info] dropping public.customers.mail also drops what uses it: constraint mail_has_at" in said
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM active_customers").fetchone() == (200,)
        conn.execute("INSERT INTO customers (id, name) VALUES (201, 'new app')")
        assert conn.execute("SELECT email FROM customers WHERE id = 201").fetchone() == ("",)
        assert conn.execute("SELECT to_regclass('customers_mail_idx')").fetchone() == (None,)


def _text(notebook: Path | None) -> str:
    """Every output of an executed notebook as text."""
    assert notebook is not None
    nb = nbformat.read(notebook, as_version=4)
    return "\n".join(
        str(out.get("text", ""))
        + "".join(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
        for cell in nb.cells
        for out in cell.get("outputs", [])
    )


def test_a_view_that_an_earlier_step_of_contract_moves_is_no_no_go(db: str) -> None:
    """The spec may move the view itself, in a contract step before the drop (a raw_sql listed
    first): then the drop will not fail, and the preflight says so instead of refusing."""
    move = "CREATE OR REPLACE VIEW active_customers AS SELECT id, email AS mail FROM customers"
    drop = 'ALTER TABLE "public"."customers" DROP COLUMN IF EXISTS "mail"'
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(CUSTOMERS)
        conn.execute("ALTER TABLE customers ADD COLUMN email text")
        moved_first, _ = drops_report(conn, [move, drop])
        moved_after, _ = drops_report(conn, [drop, move])
        both_in_one, _ = drops_report(conn, [f"DROP VIEW active_customers; {drop}"])
    assert [r.level for r in moved_first] == ["info", "info"]
    assert str(moved_first[0]).startswith("[info] view active_customers uses public.customers.mail: a step")
    assert [r.level for r in moved_after] == ["no-go", "info"]
    assert [r.level for r in both_in_one] == ["info", "info"]


def test_a_view_on_a_column_the_spec_drops_is_warned_of_from_the_first_phase(db: str) -> None:
    """drop_column: what goes with the column is the spec's intent (its index, its check), but a
    view on it makes contract's drop fail, so it is said from expand on, as for a replaced column."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(CUSTOMERS)
        spec = parse_change("change: d\noperations:\n  - drop_column: {table: customers, column: mail}\n")
        reasons, frame = left_behind_warnings(conn, spec.operations)
    assert [str(r) for r in reasons] == [
        "[warn] view active_customers uses public.customers.mail: contract's DROP COLUMN fails while it"
        " does. Drop it, or move it off the column, before contract"
    ]
    assert list(frame["contract"]) == ["fails"]

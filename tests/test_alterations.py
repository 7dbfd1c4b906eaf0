"""The in-place alterations pgroll also has (drop_not_null, set_comment, rename_index,
set_replica_identity, add_primary_key, rename_constraint, rename_table), applied phase by phase on
real servers (18, and 15), with the old app's and the new app's statements after every phase."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from zdm_runbook.core.errors import SpecError
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.catalog import check_change
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import apply_phase, scalar

SCHEMA = """
CREATE TABLE accounts (
    id int NOT NULL,
    email text NOT NULL,
    nick text NOT NULL DEFAULT 'anon',
    CONSTRAINT accounts_email_key UNIQUE (email));
CREATE INDEX accounts_nick_idx ON accounts (nick);
INSERT INTO accounts (id, email) SELECT g, 'a' || g || '@example.org' FROM generate_series(1, 200) g;
"""
ALTERATIONS = """
change: accounts-tidy
operations:
  - drop_not_null: {table: accounts, column: nick}
  - set_comment: {table: accounts, column: email, comment: "the login, unique"}
  - set_comment: {table: accounts, comment: "one row per login"}
  - rename_index: {from: accounts_nick_idx, to: accounts_nick_lookup}
  - set_replica_identity: {table: accounts, identity: full}
  - add_primary_key: {table: accounts, name: accounts_pkey, columns: [id]}
  - rename_constraint: {table: accounts, from: accounts_email_key, to: accounts_email_unique}
"""
OLD_APP = (
    "INSERT INTO accounts (id, email) VALUES (%s, %s) ON CONFLICT ON CONSTRAINT accounts_email_key DO NOTHING"
)
NEW_APP = "INSERT INTO accounts (id, email, nick) VALUES (%s, %s, NULL)"


@pytest.fixture
def accounts(any_pg_db: str) -> str:
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
    return any_pg_db


def _facts(dsn: str) -> dict[str, object]:
    q = {
        "nick not null": "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'nick'",
        "email comment": "SELECT col_description('accounts'::regclass, 2)",
        "table comment": "SELECT obj_description('accounts'::regclass, 'pg_class')",
        "nick index": "SELECT string_agg(relname, ',') FROM pg_class WHERE relname LIKE 'accounts_nick%%'",
        "replica identity": "SELECT relreplident FROM pg_class WHERE oid = 'accounts'::regclass",
        "primary key": "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'accounts'::regclass AND contype = 'p'",
        "unique": "SELECT conname FROM pg_constraint WHERE conrelid = 'accounts'::regclass AND contype = 'u'",
    }
    return {k: scalar(dsn, v) for k, v in q.items()}


def test_each_alteration_in_its_phase_with_both_apps_working(accounts: str) -> None:
    dsn = accounts
    plan = build_plan(parse_change(ALTERATIONS))
    phases = {st.key: st.phase for st in plan.steps}
    assert phases["07-rename_constraint-rename"] == Phase.CONTRACT  # the old app names it
    assert {phases[k] for k in phases if k.startswith("06-")} == {Phase.SWITCH}
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert check_change(conn, plan.change) == []
    n = 1000
    for phase in ("expand", "migrate", "switch"):
        apply_phase(dsn, plan, phase)
        with psycopg.connect(dsn, autocommit=True) as conn:
            n += 2
            conn.execute(OLD_APP, [n, f"old{n}@example.org"])
            conn.execute(OLD_APP, [n + 1, f"old{n}@example.org"])  # the conflict the old app relies on
            conn.execute(NEW_APP, [n + 1, f"new{n}@example.org"])
    assert _facts(dsn) == {
        "nick not null": False,
        "email comment": "the login, unique",
        "table comment": "one row per login",
        "nick index": "accounts_nick_lookup",
        "replica identity": "f",
        "primary key": "PRIMARY KEY (id)",
        "unique": "accounts_email_key",
    }
    for phase in ("expand", "switch"):
        assert set(apply_phase(dsn, plan, phase).values()) <= {"skipped"}, phase
    assert apply_phase(dsn, plan, "contract") == {"07-rename_constraint-rename": "applied"}
    assert _facts(dsn)["unique"] == "accounts_email_unique"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO accounts (id, email) VALUES (5000, 'x@example.org')"
            " ON CONFLICT ON CONSTRAINT accounts_email_unique DO NOTHING"
        )


RENAME = """
change: accounts-to-users
operations:
  - rename_table: {from: accounts, to: users}
  - set_comment: {table: users, comment: "renamed from accounts"}
"""


@pytest.fixture
def app_role(accounts: str) -> Iterator[str]:
    """A role that is not the owner: it reads and writes accounts through its grants only."""
    role = f"zdm_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(accounts, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}".encode())
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO {role}".encode())
    yield role
    with psycopg.connect(accounts, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}".encode())
        conn.execute(f"DROP ROLE {role}".encode())


def _as(dsn: str, role: str, *statements: str) -> list[object]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role}".encode())
        out = []
        for statement in statements:
            cur = conn.execute(statement.encode())
            out.append(cur.fetchone() if cur.description else cur.rowcount)
        return out


def test_rename_table_leaves_a_view_the_old_app_reads_and_writes(accounts: str, app_role: str) -> None:
    dsn = accounts
    plan = build_plan(parse_change(RENAME))
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert check_change(conn, plan.change) == []
    assert apply_phase(dsn, plan, "expand") == {
        "01-rename_table-rename": "applied",
        "02-set_comment-comment": "applied",
    }
    old = _as(
        dsn,
        app_role,
        "INSERT INTO accounts (id, email) VALUES (300, 'via-view@example.org') RETURNING nick",
        "UPDATE accounts SET nick = 'renamed' WHERE id = 300",
        "SELECT count(*) FROM accounts",
        "DELETE FROM accounts WHERE id = 1",
    )
    assert old == [("anon",), 1, (201,), 1], "the old app, through the view, with its own grants"
    assert _as(dsn, app_role, "SELECT nick FROM users WHERE id = 300") == [("renamed",)]
    assert scalar(dsn, "SELECT relkind FROM pg_class WHERE oid = 'accounts'::regclass") == "v"
    for phase in ("migrate", "switch"):
        apply_phase(dsn, plan, phase)
    assert set(apply_phase(dsn, plan, "expand").values()) == {"skipped"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert check_change(conn, plan.change) == [], "the catalog check accepts the renamed state"
    assert apply_phase(dsn, plan, "contract") == {"01-rename_table-drop-view": "applied"}
    assert scalar(dsn, "SELECT to_regclass('accounts') IS NULL") is True
    assert _as(dsn, app_role, "SELECT count(*) FROM users") == [(200,)]


def test_what_the_old_app_can_and_cannot_do_through_the_rename_view(accounts: str, app_role: str) -> None:
    """What the README says of rename_table's view, measured: upserts and row locks work; COPY
    into it does not, nor MERGE before PostgreSQL 17."""
    dsn = accounts
    apply_phase(dsn, build_plan(parse_change(RENAME)), "expand")
    works = _as(
        dsn,
        app_role,
        "INSERT INTO accounts (id, email) VALUES (400, 'a1@example.org')"
        " ON CONFLICT (email) DO UPDATE SET nick = 'upserted' RETURNING nick",
        "SELECT id FROM accounts WHERE email = 'a1@example.org' FOR UPDATE",
        "DO $$ BEGIN LOCK TABLE accounts IN ROW EXCLUSIVE MODE; END $$",
    )
    assert works == [("upserted",), (1,), -1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET ROLE {app_role}".encode())
        with (
            pytest.raises(psycopg.errors.WrongObjectType, match='cannot copy to view "accounts"'),
            conn.cursor().copy("COPY accounts (id, email) FROM STDIN") as copy,
        ):
            copy.write_row((401, "copied@example.org"))
        version = conn.info.server_version
        merge = "MERGE INTO accounts a USING (SELECT 2 AS id) s ON a.id = s.id WHEN MATCHED THEN UPDATE SET nick = 'm'"
        if version < 170000:
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="cannot execute MERGE on relation"):
                conn.execute(merge.encode())
        else:
            assert conn.execute(merge.encode()).rowcount == 1


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            "  - drop_not_null: {table: accounts, column: id}\n  - add_primary_key: {table: accounts, name: accounts_pkey, columns: [id]}\n  - drop_not_null: {table: accounts, column: email}",
            None,
        ),
        (
            "  - rename_index: {from: accounts_email_key_nope, to: x}",
            "operations[0].rename_index.from: index public.accounts_email_key_nope does not exist",
        ),
        (
            "  - rename_index: {from: accounts, to: x}",
            "operations[0].rename_index.from: public.accounts is not an index",
        ),
        (
            "  - set_replica_identity: {table: accounts, identity: index, index: accounts_nick_idx}",
            "operations[0].set_replica_identity.index: accounts_nick_idx is not a unique, non-partial index",
        ),
        (
            "  - rename_constraint: {table: accounts, from: nope, to: x}",
            "operations[0].rename_constraint.from: constraint nope does not exist",
        ),
        (
            "  - rename_table: {from: accounts, to: accounts_nick_idx}",
            "operations[0].rename_table.to: public.accounts_nick_idx already exists",
        ),
    ],
)
def test_the_catalog_check_refuses_what_would_fail(accounts: str, spec: str, problem: str | None) -> None:
    change = parse_change(f"change: x\noperations:\n{spec}\n")
    with psycopg.connect(accounts, autocommit=True) as conn:
        found = [str(p) for p in check_change(conn, change)]
    assert found == ([] if problem is None else [found[0]]) and (
        problem is None or found[0].startswith(problem)
    ), found


def test_a_primary_key_column_keeps_not_null_and_one_key_only(accounts: str) -> None:
    with psycopg.connect(accounts, autocommit=True) as conn:
        conn.execute("ALTER TABLE accounts ADD PRIMARY KEY (id)")
        change = parse_change(
            "change: x\noperations:\n  - drop_not_null: {table: accounts, column: id}\n"
            "  - add_primary_key: {table: accounts, name: accounts_email_pk, columns: [email]}\n"
        )
        found = [str(p) for p in check_change(conn, change)]
    assert found == [
        "operations[0].drop_not_null.column: public.accounts.id is in primary key accounts_pkey: it stays NOT NULL",
        "operations[1].add_primary_key.name: public.accounts already has primary key accounts_pkey ['id']",
    ]


def test_operations_on_a_renamed_table_must_use_its_new_name() -> None:
    with pytest.raises(
        SpecError,
        match=r"operations\[1\].set_comment.table: public.accounts is renamed to users by operations\[0\]",
    ):
        parse_change(
            "change: x\noperations:\n  - rename_table: {from: accounts, to: users}\n"
            "  - set_comment: {table: accounts, comment: nope}\n"
        )

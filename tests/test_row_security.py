"""Row-level security that would hide rows from a backfill (inspect/row_security.py): a no-go
before anything runs, and, past it, a backfill that fails rather than skipping rows. Measured
first on 15, before the check: as the table's owner under FORCE ROW LEVEL SECURITY, migrate
"succeeded" with none of the rows backfilled."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .helpers import zdm

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, tenant_id int NOT NULL, balance int NOT NULL);
INSERT INTO accounts SELECT g, g % 4, g FROM generate_series(1, 4000) g;
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON accounts
  USING (tenant_id = coalesce(nullif(current_setting('app.tenant', true), ''), '-1')::int);
"""
SPEC = """change: accounts-balance-bigint
operations:
  - change_type: {table: accounts, column: balance, new_column: balance_big, type: bigint,
                  using: "balance::bigint", reverse: "balance_big::int"}
compat:
  old:
    - {name: read my accounts, sql: "SELECT id, balance FROM accounts WHERE id = 1"}
"""


@pytest.fixture
def owner(db: str) -> Iterator[tuple[str, str]]:
    """A role that owns the table and is subject to its policies (not a superuser): its DSN, name."""
    role = f"zdm_owner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(conn.info.dbname), sql.Identifier(role)
            )
        )
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    dsn = make_conninfo(db, user=role)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
    yield dsn, role
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _run(phase: str, spec: Path, tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[int, str]:
    where = ("--dsn-env", "SHOP", "--archive", str(tmp_path / "archive"), "-p", "signoff_by", "dana")
    done = zdm("run", phase, str(spec), *where, *extra, env=env)
    return done.returncode, done.stdout + done.stderr


def _filled(db: str) -> tuple[int, bool]:
    with psycopg.connect(db) as conn:  # as the superuser: every row
        added = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'balance_big'"
        ).fetchone()
        if not added or not added[0]:
            return 0, False
        row = conn.execute("SELECT count(balance_big) FROM accounts").fetchone()
    return int(row[0]) if row else 0, True


def test_a_backfill_row_level_security_would_filter_is_a_no_go_and_past_it_fails_loudly(
    db: str, owner: tuple[str, str], tmp_path: Path
) -> None:
    dsn, role = owner
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    env = {"SHOP": dsn}
    code, out = _run("expand", spec, tmp_path, env)
    assert code == 3, out[-2000:]
    assert f"row-level security applies to {role} on public.accounts (1 policy)" in out
    assert "ALTER ROLE" in out and "BYPASSRLS" in out
    assert _filled(db) == (0, False)  # nothing ran: no new column

    # Past the preflight (require_go false), the engine's sessions refuse to be filtered: the pass
    # fails on its first read instead of "succeeding" over the rows the policy shows (none).
    assert _run("expand", spec, tmp_path, env, "-p", "require_go", "false")[0] == 0
    code, out = _run("migrate", spec, tmp_path, env, "-p", "require_go", "false")
    assert code == 1, out[-2000:]
    assert "query would be affected by row-level security policy" in out
    assert _filled(db) == (0, True)

    # As the message says: a role that bypasses it; then every row, and the app's own statements
    # still run under the policy (its compat check sees no error, filtered or not).
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(role)))
    code, out = _run("migrate", spec, tmp_path, env)
    assert code == 0, out[-2000:]
    assert _filled(db) == (4000, True)

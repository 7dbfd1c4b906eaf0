"""The app's BEFORE triggers that fire after zdm's sync trigger (inspect/sync_order.py): named
before anything runs, measured to be true (what such a trigger writes is not synced), and the way
out the warning gives (a name that sorts first) measured to work."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import apply_phase, plan_warnings

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE members (id int PRIMARY KEY, email text, seen int DEFAULT 0);
INSERT INTO members (id, email) SELECT g, 'M' || g || '@X.ORG' FROM generate_series(1, 100) g;
CREATE FUNCTION lower_email() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN NEW.email := lower(NEW.email); RETURN NEW; END $$;
CREATE FUNCTION count_seen() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN NEW.seen := coalesce(NEW.seen, 0) + 1; RETURN NEW; END $$;
CREATE TRIGGER zz_lower_email BEFORE INSERT OR UPDATE ON members FOR EACH ROW EXECUTE FUNCTION lower_email();
CREATE TRIGGER a_count_seen BEFORE INSERT OR UPDATE ON members FOR EACH ROW EXECUTE FUNCTION count_seen();
CREATE TRIGGER zz_after AFTER INSERT ON members FOR EACH ROW EXECUTE FUNCTION count_seen();
"""
SPEC = "change: members-mail\noperations:\n  - rename_column: {table: members, from: email, to: mail, type: text}\n"


def _warnings(spec: Path, db: str) -> list[str]:
    return plan_warnings(spec, db, "fires after zdm's")


def _insert(db: str, member: int) -> tuple[str, str]:
    with psycopg.connect(db, autocommit=True) as conn:  # the old app
        row = conn.execute(
            "INSERT INTO members (id, email) VALUES (%s, 'NEW@X.ORG') RETURNING email, mail", [member]
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def test_an_app_trigger_that_fires_after_the_sync_is_named_and_its_writes_are_not_synced(
    db: str, tmp_path: Path
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    (warning,) = _warnings(spec, db)  # not a_count_seen (before ours), nor zz_after (AFTER)
    assert warning.startswith(
        "[warn] public.members: the app's trigger zz_lower_email (lower_email()) fires after zdm's"
        " zdm_members_mail_sync"
    )
    assert "ALTER TRIGGER zz_lower_email ON public.members RENAME TO" in warning

    apply_phase(db, build_plan(parse_change(SPEC)), Phase.EXPAND)
    assert _insert(db, 500) == ("new@x.org", "NEW@X.ORG")  # as the warning says: not synced
    with psycopg.connect(db, autocommit=True) as conn:  # the way out it names
        conn.execute("ALTER TRIGGER zz_lower_email ON members RENAME TO a_lower_email")
    assert _insert(db, 501) == ("new@x.org", "new@x.org")
    assert _warnings(spec, db) == []

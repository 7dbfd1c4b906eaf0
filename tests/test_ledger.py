"""The ledger schema: created idempotently, versioned, safe under concurrent creation; the change lock."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from zdm_runbook import ledger
from zdm_runbook.core.errors import ZdmError

pytestmark = pytest.mark.pg


def test_ensure_is_idempotent_and_versioned(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    assert ledger.ensure(conn) == ledger.VERSIONS[-1][0]
    assert ledger.ensure(conn) == ledger.VERSIONS[-1][0]
    rows = conn.execute("SELECT version FROM zdm.schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [v for v, _, _ in ledger.VERSIONS]


def test_concurrent_ensure_converges(db: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(db, autocommit=True) as c:
                ledger.ensure(c)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_newer_ledger_is_refused(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    ledger.ensure(conn)
    conn.execute("INSERT INTO zdm.schema_version VALUES (999, 'from the future')")
    with pytest.raises(ZdmError, match="version 999, newer than this zdm-runbook"):
        ledger.ensure(conn)


def test_attempts_round_trip_and_redact(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    ledger.ensure(conn)
    ledger.record_change(conn, "c1", "demo", "abc")
    run = uuid.uuid4()
    aid = ledger.start_attempt(conn, run, "c1", "expand", "01-x", 1, {"lock_timeout": 1.0}, 123)
    blockers = [{"pid": 9, "query": "ALTER ROLE app PASSWORD 'hunter2'"}]
    ledger.finish_attempt(
        conn, aid, "lock_timeout", sqlstate="55P03", message="postgresql://u:pw@h/db", blockers=blockers
    )
    frame = ledger.attempts(conn, "c1")
    row = frame.to_dict("records")[0]
    assert (row["outcome"], row["sqlstate"], row["attempt"]) == ("lock_timeout", "55P03", 1)
    assert "pw" not in row["message"]
    assert "hunter2" not in str(row["blockers"])
    assert row["blockers"][0]["pid"] == 9
    assert ledger.applied_steps(conn, "c1") == set()
    with pytest.raises(ValueError, match="unknown outcome"):
        ledger.finish_attempt(conn, aid, "fine")


def test_one_change_runs_once_at_a_time(db: str) -> None:
    with (
        psycopg.connect(db, autocommit=True, application_name="zdm_runbook:expand") as first,
        psycopg.connect(db, autocommit=True) as second,
    ):
        ledger.lock_change(first, "orders-change")
        with pytest.raises(
            ZdmError, match=rf"being run right now by pid {first.info.backend_pid} \(zdm_runbook:expand\)"
        ):
            ledger.lock_change(second, "orders-change")
        ledger.lock_change(second, "another-change")
        ledger.unlock_change(first, "orders-change")
        ledger.lock_change(second, "orders-change")

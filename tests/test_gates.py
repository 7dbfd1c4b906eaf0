"""Gates and sign-offs from the ledger: phases refused out of order, sign-off only of a complete phase."""

from __future__ import annotations

import json
import time
from datetime import datetime, tzinfo

import psycopg
import pytest

from zdm_runbook.core.errors import ZdmError
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.ledger import gates
from zdm_runbook.ledger.gates import check_gate
from zdm_runbook.ledger.signoffs import phase_state, sign_off
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import scalar
from .test_cli import zdm

pytestmark = pytest.mark.pg

SPEC = """
change: rename-note
description: note becomes remark
operations:
  - rename_column: {table: orders, from: note, to: remark, type: text}
"""


@pytest.fixture
def orders(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        c.execute("INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 500) g")
    return db


def _run(db: str, phase: Phase) -> None:
    execute_phase(build_plan(parse_change(SPEC)), phase, db, on_batch=lambda state: None)


def test_gates_follow_the_phases_and_their_sign_offs(orders: str) -> None:
    db = orders
    _run(db, Phase.EXPAND)
    with psycopg.connect(db, autocommit=True) as conn:
        assert check_gate(conn, "rename-note", Phase.EXPAND).ok
        gate = check_gate(conn, "rename-note", Phase.MIGRATE)
        assert not gate.ok
        assert gate.reasons == [
            "expand is not signed off: read its archived run, then zdm signoff rename-note expand --by NAME"
        ]
        assert gate.waiting  # only a sign-off is missing: a scheduler may wait for it
        switch = check_gate(conn, "rename-note", Phase.SWITCH)
        assert not switch.ok and not switch.waiting  # migrate has not run: no wait opens it
        with pytest.raises(ZdmError, match=r"cannot sign off migrate of rename-note: 0 of 1 steps are done"):
            sign_off(conn, "rename-note", Phase.MIGRATE, "dba")
        assert scalar(db, "SELECT count(*) FROM zdm.signoffs") == 0
        record = sign_off(conn, "rename-note", Phase.EXPAND, "dba", "CHG-1", "read the run")
        assert (record.by, record.ticket) == ("dba", "CHG-1")
        assert check_gate(conn, "rename-note", Phase.MIGRATE).ok
        assert not check_gate(conn, "rename-note", Phase.SWITCH).ok
    _run(db, Phase.MIGRATE)
    with psycopg.connect(db, autocommit=True) as conn:
        assert phase_state(conn, "rename-note", Phase.MIGRATE).complete
        sign_off(conn, "rename-note", Phase.MIGRATE, "dba")
        assert check_gate(conn, "rename-note", Phase.SWITCH).ok
    _run(db, Phase.SWITCH)  # a phase without steps: complete once a run of it succeeded
    with psycopg.connect(db, autocommit=True) as conn:
        assert phase_state(conn, "rename-note", Phase.SWITCH).complete
        sign_off(conn, "rename-note", Phase.SWITCH, "dba")
        contract = check_gate(conn, "rename-note", Phase.CONTRACT)
        assert not contract.ok
        assert "one deploy cycle (24.0 h) must pass" in contract.reasons[0]
        assert contract.waiting  # time alone opens it
        waived = check_gate(conn, "rename-note", Phase.CONTRACT, deploy_cycle_override="hotfix: no N-1 left")
        assert waived.ok and waived.waived == "hotfix: no N-1 left"
        assert check_gate(conn, "rename-note", Phase.CONTRACT, deploy_cycle_s=0).ok
    runs = scalar(
        db, "SELECT string_agg(phase || ':' || outcome, ',' ORDER BY started_at) FROM zdm.phase_runs"
    )
    assert runs == "expand:succeeded,migrate:succeeded,switch:succeeded"


def test_zdm_status_and_signoff(orders: str) -> None:
    db = orders
    env = {"ZDM_DSN": db}
    no_ledger = zdm("status", env=env)
    assert no_ledger.returncode == 2
    assert "it has no ledger (schema zdm)" in no_ledger.stderr
    assert scalar(db, "SELECT to_regnamespace('zdm')") is None, "status creates nothing"
    _run(db, Phase.EXPAND)
    refused = zdm("signoff", "rename-note", "migrate", "--by", "dba", env=env)
    assert refused.returncode == 1
    assert "cannot sign off migrate of rename-note: 0 of 1 steps are done" in refused.stderr
    assert zdm("signoff", "no-such-change", "expand", "--by", "dba", env=env).returncode == 1
    done = zdm("signoff", "rename-note", "expand", "--by", "dba", "--ticket", "CHG-7", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rename-note expand signed off by dba at ")
    status = zdm("status", env=env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == "rename-note: note becomes remark"
    assert lines[1].startswith("  expand   complete, signed off by dba")
    assert lines[2].startswith("           last run succeeded at ") and lines[2].endswith(
        ": (not a notebook run)"
    )
    assert lines[3] == "  migrate  0/1 steps"
    assert "gate closed: migrate has not run yet: zdm run migrate SPEC" in lines[4]
    data = json.loads(zdm("status", "rename-note", "--json", env=env).stdout)
    assert data[0]["phases"][0]["signed_off_by"] == "dba"
    assert data[0]["phases"][1]["gate"]["ok"] is True
    assert zdm("status", "nope", env=env).returncode == 2


class _ClientClockTwoDaysAhead(datetime):
    """The machine running zdm with its clock two days ahead of the database server's."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> _ClientClockTwoDaysAhead:
        return cls.fromtimestamp(time.time() + 2 * 86400, tz)


def test_the_deploy_cycle_is_measured_by_the_servers_clock(
    orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = orders
    for phase in (Phase.EXPAND, Phase.MIGRATE, Phase.SWITCH):
        _run(db, phase)
        with psycopg.connect(db, autocommit=True) as conn:
            sign_off(conn, "rename-note", phase, "dba")
    # A skewed client clock must not open the gate: signed_at and now() both come from the server.
    monkeypatch.setattr(gates, "datetime", _ClientClockTwoDaysAhead, raising=False)
    with psycopg.connect(db, autocommit=True) as conn:
        contract = check_gate(conn, "rename-note", Phase.CONTRACT)
        assert not contract.ok and "switch was signed off 0." in contract.reasons[0], contract.reasons
        # Two hours later by the server's clock (the sign-off moved back, not the clock forward).
        conn.execute("UPDATE zdm.signoffs SET signed_at = signed_at - interval '2 hours'")
        assert "switch was signed off 2.0 h ago" in check_gate(conn, "rename-note", Phase.CONTRACT).reasons[0]
        conn.execute("UPDATE zdm.signoffs SET signed_at = signed_at - interval '1 day'")
        assert check_gate(conn, "rename-note", Phase.CONTRACT).ok

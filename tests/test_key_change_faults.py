"""The swap of change_key_type killed while it waits on a lock: one transaction or nothing.

Real zdm run (papermill, a real kernel), a real blocker holding a child table, SIGKILL of the
runner while the swap's attempt waits, then a re-run that converges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from .helpers import scalar
from .sessions import Blocker, wait_for
from .test_key_change import SCHEMA, SPEC, _assert_converted

SIGN = ("-p", "signoff_by", "dba")


def _zdm_run(dsn: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "zdm_runbook", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "ZDM_DSN": dsn},
    )


def _ok(dsn: str, *args: str) -> None:
    run = _zdm_run(dsn, *args)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out[-3000:]


def _swap_waiting(dsn: str) -> bool:
    return bool(
        scalar(
            dsn,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
            " AND a.application_name = 'zdm_runbook:switch' AND l.relation = 'payments'::regclass",
        )
    )


def _half_swapped(dsn: str) -> list[str]:
    """Whatever is not as it was before the swap began."""
    wrong = []
    if (
        scalar(
            dsn,
            "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attname = 'id'",
        )
        != "integer"
    ):
        wrong.append("customers.id is no longer integer")
    if (
        scalar(dsn, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'customers_pkey'")
        != "PRIMARY KEY (id)"
    ):
        wrong.append("the primary key moved")
    refs = scalar(
        dsn,
        "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE contype = 'f'"
        " AND confrelid = 'customers'::regclass AND confkey = ARRAY[(SELECT attnum FROM pg_attribute"
        " WHERE attrelid = 'customers'::regclass AND attname = 'id')]",
    )
    if refs != "orders_customer_id_fkey,payments_customer_id_fkey":
        wrong.append(f"foreign keys on id: {refs}")
    return wrong


def test_a_swap_killed_while_it_waits_is_nothing_and_a_rerun_converges(db: str, tmp_path: Path) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SCHEMA.format(kind="serial", overriding="").encode())
        conn.execute("SELECT setval(pg_get_serial_sequence('customers', 'id'), 300)")
    spec, archive = tmp_path / "key.yaml", str(tmp_path / "archive")
    spec.write_text(SPEC)
    for phase in ("expand", "migrate"):
        _ok(db, phase, str(spec), "--archive", archive, *SIGN)
    # A report holds payments (a child): the swap gets customers, then waits for payments.
    with Blocker(db, "BEGIN", "SELECT count(*) FROM payments", app="nightly-report"):
        runner = _zdm_run(db, "switch", str(spec), "--archive", archive, "-p", "lock_timeout", "2s", *SIGN)
        assert wait_for(lambda: _swap_waiting(db), timeout=120), "the swap never waited on payments"
        runner.send_signal(signal.SIGKILL)
        runner.wait(30)
        assert wait_for(
            lambda: (
                scalar(
                    db, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'zdm_runbook%%'"
                )
                == 0
            ),
            timeout=60,
        ), "the kernel's sessions outlived the killed run"
        assert _half_swapped(db) == []
    _ok(db, "switch", str(spec), "--archive", archive, *SIGN)
    assert (
        scalar(db, "SELECT outcome FROM zdm.phase_runs WHERE phase = 'switch' ORDER BY started_at LIMIT 1")
        == "interrupted"
    )
    _ok(
        db,
        "contract",
        str(spec),
        "--archive",
        archive,
        "-p",
        "deploy_cycle_override",
        "test",
        "-p",
        "usage_window",
        "0s",
    )
    _assert_converted(db, "serial")

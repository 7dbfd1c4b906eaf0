"""Faults during ``zdm run``: the runner SIGKILLed in the middle of a backfill, and a session
holding a lock while expand runs. Real processes, real signals, real locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psycopg

from zdm_runbook import ledger

from .helpers import fingerprint, scalar
from .sessions import AppProbe, Background, Blocker, wait_for

REF = """
change: orders-ref
operations:
  - change_type: {table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int"}
"""


def _zdm_run(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "zdm_runbook", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _expand_into_a_lock_queue(dsn: str, table: str, *args: str, env: dict[str, str] | None = None) -> str:
    """``zdm run expand ARGS`` while nightly-report reads ``table`` (SQL) in an open transaction and
    maintenance's LOCK TABLE queues behind it; the run's output."""
    with Blocker(dsn, f"SELECT count(*) FROM {table}", app="nightly-report"):
        queued = Background(
            dsn, f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; COMMIT", app="maintenance"
        )
        waiting = f"SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '{table}'::regclass"
        assert wait_for(lambda: _sessions(dsn, "maintenance") == 1 and bool(scalar(dsn, waiting)))
        runner = _zdm_run("expand", *args, "--quiet", env=env)
        out, _ = runner.communicate(timeout=180)
    queued.join()
    assert runner.returncode == 3, out[-3000:]
    return out


def _sessions(dsn: str, app: str) -> int:
    return int(scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", [app]))


def test_sigkill_during_the_backfill_then_rerun_resumes_and_verifies(orders_env: str, tmp_path: Path) -> None:
    dsn = orders_env
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (customer_id, note) SELECT g % 50 + 1, 'm' || g FROM generate_series(1, 240000) g"
        )
    spec, archive = tmp_path / "change.yaml", tmp_path / "archive"
    spec.write_text(REF)
    assert (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "zdm_runbook",
                "run",
                "expand",
                str(spec),
                "--archive",
                str(archive),
                "-p",
                "signoff_by",
                "a",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        ).returncode
        == 0
    )
    total = scalar(dsn, "SELECT count(*) FROM orders")
    # Small fixed batches with pauses, so the kill surely lands in the middle.
    runner = _zdm_run("migrate", str(spec), "--archive", str(archive), "-p", "batch_size", "500", "--quiet")
    assert wait_for(
        lambda: (scalar(dsn, "SELECT coalesce(max(batch), 0) FROM zdm.backfill_batches") or 0) >= 5,
        timeout=120,
    ), runner.stdout.read() if runner.poll() is not None and runner.stdout else "no batch"
    # Slow it down from another session (as a DBA would), so that the kill lands mid-backfill
    # even on a loaded machine, where the kernel takes seconds to notice its parent is gone.
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert ledger.control_backfill(conn, "orders-ref", pause_ms=200) == 1
    runner.send_signal(signal.SIGKILL)
    runner.wait(30)
    # The kernel notices its parent is gone and exits; its sessions go with it.
    assert wait_for(lambda: _sessions(dsn, "zdm_runbook:migrate%") == 0, timeout=60)
    done_before = scalar(dsn, "SELECT max(batch) FROM zdm.backfill_batches")
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE customer_ref IS NULL") > 0, "killed before the end"
    with psycopg.connect(dsn, autocommit=True) as conn:
        ledger.control_backfill(conn, "orders-ref", clear=True)

    again = subprocess.run(
        [sys.executable, "-m", "zdm_runbook", "run", "migrate", str(spec), "--archive", str(archive)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert f"verified public.orders: {total:,} rows checked, 0 mismatches" in again.stdout
    with psycopg.connect(dsn) as conn:
        scanned, batches = conn.execute(
            "SELECT sum(rows_scanned), count(*) FROM zdm.backfill_batches WHERE step_key = '01-change_type-backfill'"
        ).fetchone()  # type: ignore[misc]
        outcomes = [
            r[0]
            for r in conn.execute(
                "SELECT outcome FROM zdm.phase_runs WHERE phase = 'migrate' ORDER BY started_at"
            )
        ]
    assert scanned == total, "every row scanned exactly once across the killed run and the re-run"
    assert batches > done_before
    assert outcomes == ["interrupted", "succeeded"], "the killed run is closed by the next one"
    assert (
        scalar(dsn, "SELECT count(*) FROM orders WHERE customer_ref IS DISTINCT FROM customer_id::bigint")
        == 0
    )


def test_blocker_during_expand_bounded_waits_named_in_the_archive(orders_env: str, tmp_path: Path) -> None:
    dsn = orders_env
    spec, archive = tmp_path / "change.yaml", tmp_path / "archive"
    spec.write_text(REF)
    with (
        AppProbe(dsn, "SELECT count(*) FROM orders WHERE id = 7", every=0.05, app="shop") as probe,
        Blocker(dsn, "SELECT count(*) FROM orders", app="nightly-report") as blocker,
    ):
        runner = _zdm_run(
            "expand", str(spec), "--archive", str(archive), "-p", "lock_timeout", "500ms", "--quiet"
        )
        assert wait_for(lambda: _sessions(dsn, "zdm_runbook:expand") > 0, timeout=60)
        time.sleep(4)  # several attempts time out against the blocker
        blocker.release()
        out, _ = runner.communicate(timeout=180)
    assert runner.returncode == 0, out[-3000:]
    assert not probe.errors and probe.max_wait < 2.0, (
        f"the app never froze: longest wait {probe.max_wait:.2f} s"
    )
    notebook = next(archive.rglob("expand-*.ipynb"))
    text = str(nbformat.read(notebook, as_version=4))
    assert "hit lock_timeout after" in text and "nightly-report" in text
    assert f"blocked by pid {blocker.pid} (nightly-report)" in text
    with psycopg.connect(dsn) as conn:
        # Each attempt ran under a lock_timeout no longer than the phase's (the ladder's rungs grow
        # up to it), and the server ended it by that timeout (the outcome is 55P03's). What the
        # wait measured on the clock is evidence only: on a loaded machine the timer that ends a
        # 500 ms wait can fire late (1.27 s once in CI), so it is not asserted.
        timeouts = conn.execute(
            "SELECT count(*), max((settings ->> 'lock_timeout')::float8) FROM zdm.step_attempts"
            " WHERE outcome = 'lock_timeout'"
        ).fetchone()
    assert timeouts and timeouts[0] >= 2 and timeouts[1] <= 0.5, timeouts
    assert os.path.getsize(notebook.with_suffix(".html")) > 10_000


def test_the_preflight_sees_locks_on_a_mixed_case_schema_qualified_table(db: str, tmp_path: Path) -> None:
    """``Billing.Invoice`` is the table "Billing"."Invoice": the preflight looked up billing.invoice
    (case-folded), found nothing and said GO while the table had a lock queue. A lowercase table of
    the same name, quiet, must not be the one looked at."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            'CREATE SCHEMA "Billing"; CREATE TABLE "Billing"."Invoice" (id int PRIMARY KEY);'
            " CREATE SCHEMA billing; CREATE TABLE billing.invoice (id int PRIMARY KEY);"
        )
    spec, archive = tmp_path / "change.yaml", tmp_path / "archive"
    spec.write_text(
        "change: invoice-note\noperations:\n  - add_column: {table: Billing.Invoice, column: note, type: text}\n"
    )
    where = ("--dsn-env", "BILL", "--archive", str(archive))
    out = _expand_into_a_lock_queue(db, '"Billing"."Invoice"', str(spec), *where, env={"BILL": db})
    assert 'a lock queue already exists on "Billing"."Invoice"' in out and "(maintenance)" in out
    assert "does not exist" not in out
    assert (
        scalar(
            db,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = '\"Billing\".\"Invoice\"'::regclass AND attname = 'note'",
        )
        == 0
    )


def test_preflight_no_go_stops_before_any_ddl_with_exit_3(orders_env: str, tmp_path: Path) -> None:
    """A lock queue already on the table: the preflight says no-go and nothing runs."""
    dsn = orders_env
    spec, archive = tmp_path / "change.yaml", tmp_path / "archive"
    spec.write_text(REF)
    before = fingerprint(dsn)
    out = _expand_into_a_lock_queue(dsn, "orders", str(spec), "--archive", str(archive))
    assert "PreflightRefused" in out and "a lock queue already exists on orders" in out
    assert "(maintenance)" in out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM zdm.step_attempts").fetchone() == (0,)
        assert conn.execute("SELECT outcome FROM zdm.phase_runs").fetchall() == [("refused",)]
    assert fingerprint(dsn) == before

"""The phase notebooks, executed by papermill on a real kernel against a real server.

``zdm run`` is exercised in-process (``runner.run``, the function the command calls) and, where
the exit status itself is the point, as the command. Output notebooks are read back with nbformat.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import psycopg
import pytest

from zdm_runbook.notebook import runbook, runner
from zdm_runbook.notebook.parameters import PARAMETERS, declared
from zdm_runbook.notebook.templates import build, template_path
from zdm_runbook.spec.model import Phase

from .helpers import ORDERS, columns, fingerprint, scalar, zdm

# Every recipe in one change, so each template runs each recipe's steps.
ALL_RECIPES = """
change: all-recipes
description: every recipe on one table
operations:
  - change_type: {table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int", not_null: true}
  - rename_column: {table: orders, from: note, to: remark, type: text}
  - add_not_null_column: {table: orders, column: currency, type: text, backfill: "'EUR'", default: "'EUR'"}
  - add_not_null_column: {table: orders, column: region, type: text,
                          backfill: "CASE WHEN customer_id % 2 = 0 THEN 'north' ELSE 'south' END"}
  - create_index: {table: orders, name: orders_customer_ref_idx, columns: [customer_ref]}
"""

REF = """
change: orders-ref
operations:
  - change_type: {table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int"}
"""

SIGN = {"signoff_by": "alice", "signoff_ticket": "CHG-1"}
CONTRACT = {"deploy_cycle_override": "test: no old app runs", "usage_window": "0s"}


def _spec(tmp_path: Path, text: str, name: str = "change.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _run(phase: str, spec: Path, archive: Path, **params: str) -> runner.RunResult:
    return runner.run(phase, spec, params, archive)


def _outputs(notebook: Path) -> str:
    """Every output of an executed notebook as text (streams, HTML, errors)."""
    nb = nbformat.read(notebook, as_version=4)
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts += [str(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
            parts += [out.get("ename", ""), out.get("evalue", "")]
    return "\n".join(parts)


def _phase_runs(dsn: str, change: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT phase, outcome, notebook_path, notebook_sha256, parameters FROM zdm.phase_runs"
            " WHERE change_id = %s ORDER BY started_at",
            [change],
        ).fetchall()


@pytest.mark.parametrize("phase", list(Phase))
def test_committed_templates_are_generated_thin_and_without_outputs(phase: Phase) -> None:
    path = template_path(phase)
    committed = nbformat.read(path, as_version=4)
    assert committed == build(phase), f"{path} differs: python -m zdm_runbook.notebook.templates rewrites it"
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert code[0].metadata["tags"] == ["parameters"]
    names = [line.split(" = ")[0] for line in code[0].source.splitlines()[1:]]
    assert names == list(declared(phase))
    assert all(len(c.source.splitlines()) <= 3 for c in code[1:]), "cells call the library, no logic"
    assert {
        "spec",
        "dsn_env",
        "lock_timeout",
        "statement_timeout",
        "dry_run",
        "headless",
        "signoff_by",
    } <= set(names)
    assert not any(p.name in {"dsn", "password"} for p in PARAMETERS)


def test_every_recipe_through_all_four_templates(
    any_pg_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ORDERS)
    monkeypatch.setenv("ZDM_DSN", dsn)
    spec, archive = _spec(tmp_path, ALL_RECIPES), tmp_path / "archive"
    extra = {Phase.MIGRATE: {"batch_size": "500"}, Phase.CONTRACT: CONTRACT}
    for phase in Phase:
        result = _run(phase.value, spec, archive, **SIGN, **extra.get(phase, {}))
        assert result.exit_code == 0, result
        with psycopg.connect(dsn) as conn:
            # Done: applied, or found done at once (the rename's NOT NULL steps follow a nullable note).
            done = conn.execute(
                "SELECT count(DISTINCT step_key) FROM zdm.step_attempts WHERE change_id = 'all-recipes'"
                " AND phase = %s AND outcome IN ('applied', 'skipped')",
                [phase.value],
            ).fetchone()
            steps = conn.execute(
                "SELECT jsonb_array_length(steps -> %s) FROM zdm.changes", [phase.value]
            ).fetchone()
            signed = conn.execute(
                "SELECT by_name, ticket, evidence ->> 'run_id' FROM zdm.signoffs WHERE phase = %s",
                [phase.value],
            ).fetchone()
        assert done and steps and done[0] == steps[0] > 0, f"{phase}: {done} of {steps} steps applied"
        assert signed == ("alice", "CHG-1", result.run_id)
        if phase == Phase.EXPAND:
            assert {"customer_ref", "remark", "currency", "region"} <= set(columns(dsn, "orders"))
        if phase == Phase.MIGRATE:
            assert (
                scalar(dsn, "SELECT count(*) FROM orders WHERE region IS NULL OR customer_ref IS NULL") == 0
            )
            assert "verified public.orders" in _outputs(result.notebook)  # type: ignore[arg-type]
    cols = columns(dsn, "orders")
    assert "customer_id" not in cols and "note" not in cols
    assert cols["customer_ref"] == ("bigint", True) and cols["region"] == ("text", True)
    status = json.loads(zdm("status", "all-recipes", "--json", env={"ZDM_DSN": dsn}).stdout)[0]
    assert [f["status"] for f in status["backfills"]] == ["done"] * 4 and not status["last_failures"]
    runs = _phase_runs(dsn, "all-recipes")
    assert [(r[0], r[1]) for r in runs] == [(p.value, "succeeded") for p in Phase]
    files = sorted(p.name.rsplit("-", 1)[0] + p.suffix for p in (archive / "all-recipes").iterdir())
    assert files == sorted(f"{p.value}{ext}" for p in Phase for ext in (".html", ".ipynb"))
    for _, _, path, sha, params in runs:
        assert Path(path).is_file() and len(sha) == 64
        assert params["headless"] is True and "run_id" not in params


def test_archived_html_holds_plan_lock_report_chart_and_signoff(orders_env: str, tmp_path: Path) -> None:
    spec, archive = _spec(tmp_path, REF), tmp_path / "archive"
    assert _run("expand", spec, archive, **SIGN).exit_code == 0
    result = _run("migrate", spec, archive, **SIGN)
    assert result.exit_code == 0, result
    assert result.html is not None
    page = result.html.read_text()
    assert 'UPDATE "public"."orders" SET "customer_ref"' in page  # the plan's SQL
    assert "RowExclusiveLock per batch" in page  # what it locks
    assert "GO: preflight on orders" in page  # the lock report
    assert page.count("data:image/png;base64,") >= 1  # the backfill chart
    assert (
        page.count('alt="chart of the backfill 01-change_type-backfill of public.orders (orders-ref)"') == 1
    )
    assert "signed off by alice" in page and "CHG-1" in page
    assert "PostgreSQL 1" in page  # the server version in the header


def test_gate_refuses_out_of_order_and_changes_nothing(orders_env: str, tmp_path: Path) -> None:
    spec, archive = _spec(tmp_path, REF), tmp_path / "archive"
    before = fingerprint(orders_env)
    done = zdm("run", "switch", str(spec), "--archive", str(archive), "--quiet")
    assert done.returncode == 3, done.stderr
    assert "gate to switch: closed" in done.stderr and "migrate has not run yet" in done.stderr
    assert fingerprint(orders_env) == before
    [notebook] = (archive / "orders-ref").glob("switch-*.ipynb")
    assert "GateRefused" in _outputs(notebook)
    assert [(r[0], r[1]) for r in _phase_runs(orders_env, "orders-ref")] == [("switch", "refused")]

    # expand without a sign-off: migrate stays closed, and says how to open it.
    assert _run("expand", spec, archive).exit_code == 0
    refused = _run("migrate", spec, archive)
    assert refused.exit_code == 3 and "zdm signoff orders-ref expand --by NAME" in refused.message
    assert scalar(orders_env, "SELECT count(*) FROM orders WHERE customer_ref IS NOT NULL") == 0


def test_failing_step_is_archived_with_the_error_and_exit_1(orders_env: str, tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        "change: bad-unique\noperations:\n  - create_index: {table: orders, name: orders_customer_uq, columns: [customer_id], unique: true}\n",
    )
    result = _run("expand", spec, tmp_path / "archive")
    assert result.exit_code == 1 and result.outcome == "failed"
    assert result.notebook is not None and result.html is not None
    text = _outputs(result.notebook)
    assert "StepFailed" in text and "23505" in text  # the step, and the SQLSTATE
    assert "Not applied" in text
    [(phase, outcome, path, sha, _)] = _phase_runs(orders_env, "bad-unique")
    assert (phase, outcome) == ("expand", "failed") and path == str(result.notebook.resolve()) and sha
    status = zdm("status", "bad-unique")
    assert status.returncode == 0, status.stderr
    assert "last run failed at " in status.stdout and str(result.notebook.resolve()) in status.stdout
    assert "last failure of 01-create_index-create (failed" in status.stdout and "23505" in status.stdout


def test_rerun_of_a_completed_phase_changes_nothing(orders_env: str, tmp_path: Path) -> None:
    spec, archive = _spec(tmp_path, REF), tmp_path / "archive"
    assert _run("expand", spec, archive).exit_code == 0
    before = fingerprint(orders_env)
    again = _run("expand", spec, archive)
    assert again.exit_code == 0
    assert fingerprint(orders_env) == before
    with psycopg.connect(orders_env) as conn:
        outcomes = conn.execute(
            "SELECT DISTINCT outcome FROM zdm.step_attempts WHERE run_id = %s",
            [again.run_id],
        ).fetchall()
    assert outcomes == [("skipped",)]


def test_two_concurrent_runs_of_one_change_one_is_refused(orders_env: str, tmp_path: Path) -> None:
    spec, archive = _spec(tmp_path, REF), tmp_path / "archive"
    results: list[runner.RunResult] = []
    # The first run waits on a row lock the test holds, so the second surely overlaps it.
    with psycopg.connect(orders_env) as holder:
        holder.execute("LOCK TABLE orders IN SHARE MODE")
        first = threading.Thread(
            target=lambda: results.append(
                _run("expand", spec, archive, lock_timeout="500ms", require_go="false")
            )
        )
        first.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not scalar(
            orders_env, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'zdm_runbook:expand'"
        ):
            time.sleep(0.2)
        second = _run("expand", spec, archive)
        holder.rollback()
    first.join(120)
    assert second.exit_code == 1
    assert "is being run right now by pid" in second.message
    assert results and results[0].exit_code == 0, results


def test_dry_run_shows_the_plan_and_executes_nothing(orders_env: str, tmp_path: Path) -> None:
    before = fingerprint(orders_env)
    result = _run("expand", _spec(tmp_path, REF), tmp_path / "archive", dry_run="true")
    assert result.exit_code == 0 and result.outcome == "dry run"
    assert fingerprint(orders_env) == before
    assert "ADD COLUMN IF NOT EXISTS" in _outputs(result.notebook)  # type: ignore[arg-type]
    assert [(r[0], r[1]) for r in _phase_runs(orders_env, "orders-ref")] == [("expand", "dry_run")]


def test_bad_parameters_exit_2_before_anything_runs(orders_env: str, tmp_path: Path) -> None:
    spec, archive = _spec(tmp_path, REF), tmp_path / "archive"
    before = fingerprint(orders_env)
    cases = [
        (["-p", "lock_timout", "2s"], "lock_timout: unknown parameter of the expand notebook"),
        (["-p", "max_attempts", "many"], "max_attempts: 'many' is not a valid int"),
        (["-p", "lock_timeout", "0s"], "lock_timeout: must be greater than zero"),
        (["-p", "lock_timeout", "2min"], "lock_timeout: must be shorter than statement_timeout"),
        (["-p", "batch_size", "10"], "batch_size: unknown parameter of the expand notebook"),
        (["-p", "dsn_env", "NO_SUCH_VAR_ZDM"], "environment variable NO_SUCH_VAR_ZDM is not set"),
        (["--dsn-env", "NO_SUCH_VAR_ZDM"], "environment variable NO_SUCH_VAR_ZDM is not set"),
        (
            ["--dsn-env", "ZDM_DSN", "-p", "dsn_env", "OTHER"],
            "--dsn-env ZDM_DSN and -p dsn_env OTHER disagree",
        ),
        (["-p", "dsn_env", "postgresql://u:pw@h/db"], "dsn_env"),
        (["-p", "signoff_notes", "password=hunter2"], "signoff_notes: looks like it carries a password"),
        (["-p", "headless", "false"], "headless: is set by zdm run itself"),
        (["-p", "dry_run", "maybe"], "dry_run: 'maybe' is not a valid bool"),
    ]
    for args, expected in cases:
        done = zdm("run", "expand", str(spec), "--archive", str(archive), *args)
        assert done.returncode == 2, (args, done.stderr)
        assert expected in done.stderr, (args, done.stderr)
        assert "hunter2" not in done.stderr + done.stdout and "pw@" not in done.stderr
    missing = zdm("run", "expand", "nope.yaml")
    assert missing.returncode == 2 and "spec: no such file: nope.yaml" in missing.stderr
    assert not archive.exists()
    assert fingerprint(orders_env) == before


def test_password_in_the_dsn_never_reaches_the_archive_or_the_logs(
    db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = "S3cret-pw-" + "x7Qz"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(ORDERS)
        conn.execute(f"CREATE ROLE zdm_pw_user LOGIN SUPERUSER PASSWORD '{secret}'")
    try:
        params = psycopg.conninfo.conninfo_to_dict(db)
        params.update(user="zdm_pw_user", password=secret)
        monkeypatch.setenv("APP_DSN", psycopg.conninfo.make_conninfo(**params))
        monkeypatch.chdir(tmp_path)
        spec, archive = _spec(tmp_path, REF), tmp_path / "archive"
        where = ("--archive", str(archive), "--dsn-env", "APP_DSN")
        ok = zdm("run", "expand", str(spec), *where)
        assert ok.returncode == 0, ok.stderr
        # Failing runs too: a step that fails, and a server that cannot be reached.
        bad = _spec(
            tmp_path,
            "change: bad-unique\noperations:\n  - create_index: {table: orders, name: orders_cid_uq, columns: [customer_id], unique: true}\n",
            "bad.yaml",
        )
        failing = zdm("run", "expand", str(bad), *where)
        assert failing.returncode == 1, failing.stderr
        params.update(port="1")
        monkeypatch.setenv("APP_DSN", psycopg.conninfo.make_conninfo(**params))
        unreachable = zdm("run", "expand", str(spec), *where)
        assert unreachable.returncode == 1 and "cannot connect" in unreachable.stderr, unreachable.stderr
        files = list(archive.rglob("*"))
        # The unreachable server is found before the kernel starts: two runs archived, not three.
        assert len([f for f in files if f.suffix == ".ipynb"]) == 2
        for f in files:
            if f.is_file():
                assert secret not in f.read_text(), f
        for text in (
            ok.stdout,
            ok.stderr,
            failing.stdout,
            failing.stderr,
            unreachable.stdout,
            unreachable.stderr,
        ):
            assert secret not in text
        with psycopg.connect(db) as conn:
            ledger_text = conn.execute(
                "SELECT coalesce(string_agg(r::text, ' '), '') FROM zdm.phase_runs r"
            ).fetchone()
        assert ledger_text and secret not in ledger_text[0]
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("DROP OWNED BY zdm_pw_user CASCADE")
            conn.execute("DROP ROLE zdm_pw_user")


def test_contract_gate_refuses_while_the_old_column_is_still_queried(orders_env: str, tmp_path: Path) -> None:
    with psycopg.connect(orders_env, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("CREATE INDEX orders_customer_id_idx ON orders (customer_id)")  # goes with the column
    spec, archive = _spec(tmp_path, REF), tmp_path / "archive"
    for phase in ("expand", "migrate", "switch"):
        assert _run(phase, spec, archive, **SIGN).exit_code == 0
    stop = threading.Event()

    def old_app() -> None:
        with psycopg.connect(orders_env, autocommit=True, application_name="old-app") as conn:
            while not stop.is_set():
                conn.execute("SELECT customer_id FROM orders WHERE id = %s", [7]).fetchone()
                time.sleep(0.05)

    app = threading.Thread(target=old_app)
    app.start()
    try:
        refused = _run("contract", spec, archive, deploy_cycle_override="test", usage_window="2s")
    finally:
        stop.set()
        app.join()
    assert refused.exit_code == 3, refused
    assert (
        "column orders.customer_id" in refused.message and "SELECT customer_id FROM orders" in refused.message
    )
    assert "customer_id" in columns(orders_env, "orders")
    # The old app is gone: the same gate opens, and contract drops the column.
    done = _run("contract", spec, archive, deploy_cycle_override="test", usage_window="1s")
    assert done.exit_code == 0, done
    assert "customer_id" not in columns(orders_env, "orders")
    assert "pg_stat_statements (watched for 1 s)" in _outputs(done.notebook)  # type: ignore[arg-type]
    # The preflight said, before the drop, what PostgreSQL would drop with the column.
    said = "[info] dropping public.orders.customer_id also drops what uses it: index"
    assert said in _outputs(done.notebook) and "orders_customer_id_idx" in _outputs(done.notebook)  # type: ignore[arg-type]
    assert scalar(orders_env, "SELECT to_regclass('orders_customer_id_idx') IS NULL") is True
    # The evidence: the app's statement whole, as code that MathJax leaves alone; zdm's own counted.
    evidence = _outputs(refused.notebook)  # type: ignore[arg-type]
    assert "<pre class='tex2jax_ignore mathjax_ignore'" in evidence
    assert "SELECT customer_id FROM orders WHERE id = $1\n" in evidence or "WHERE id = $1</pre>" in evidence
    assert "of zdm-runbook's own statements, tagged, not shown" in evidence
    assert "CAST" not in evidence.split("pg_stat_statements")[1], "a statement of zdm's shown as the app's"


def test_prepare_writes_a_notebook_with_the_parameters_filled_in(orders_env: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, REF)
    out = tmp_path / "mine.ipynb"
    done = zdm(
        "prepare", "migrate", str(spec), "-p", "batch_size", "250", "--dsn-env", "ZDM_DSN", "-o", str(out)
    )
    assert done.returncode == 0, done.stderr
    nb = nbformat.read(out, as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and "batch_size =" in c.source]  # one cell
    assert cell.metadata["tags"] == ["parameters"]
    assert "batch_size = 250  # rows per backfill batch" in cell.source and "headless = False" in cell.source
    assert f'spec = "{spec.resolve()}"' in cell.source and 'run_id = ""' in cell.source
    assert 'dsn_env = "ZDM_DSN"' in cell.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert json.loads(out.read_text())["metadata"]["kernelspec"]["name"] == "python3"


def test_a_password_in_the_archive_fails_the_run_loudly_and_is_masked(tmp_path: Path) -> None:
    notebook, page = tmp_path / "expand.ipynb", tmp_path / "expand.html"
    notebook.write_text('{"text": "connecting to postgresql://app:Hunter2pw@db.example/prod"}\n')
    page.write_text("<pre>host=db password=Hunter2pw dbname=prod</pre>\n<p>fine</p>\n")
    result = runner.RunResult("expand", "c", "r", 0, "succeeded", notebook, page)
    runner._scan(result)
    assert result.exit_code == 1 and result.outcome == "failed"
    assert result.secrets == ["expand.ipynb line 1: URI password", "expand.html line 1: password keyword"]
    assert "a password was found in the archived run" in str(result)
    for path in (notebook, page):
        assert "Hunter2pw" not in path.read_text() and "***" in path.read_text()


def test_interactive_sign_off_form_records_the_approval(orders_env: str, tmp_path: Path) -> None:
    """In JupyterLab the last cell shows a form; clicking Approve writes the same record."""
    spec = _spec(tmp_path, REF)
    book = runbook.start("expand", {"spec": str(spec)})
    book.gate()
    book.preflight()
    book.execute()
    book.summary()
    book.sign_off()
    form = book.form
    assert form is not None
    assert book.session._control.closed and book.session._worker.closed  # type: ignore[union-attr]  # the form's own
    form.button.click()  # no name yet: refused in the form's words
    assert "enter your name" in form.message.value and not form.button.disabled
    form.name.value, form.ticket.value, form.notes.value = "dana", "CHG-9", "looked at the lock report"
    form.button.click()
    assert "signed off</b> by dana" in form.message.value and "not signed off" not in form.message.value
    assert form.button.disabled and all(f.disabled for f in form.fields)
    with psycopg.connect(orders_env) as conn:
        row = conn.execute(
            "SELECT by_name, ticket, notes FROM zdm.signoffs WHERE change_id = 'orders-ref'"
        ).fetchone()
    assert row == ("dana", "CHG-9", "looked at the lock report")


def test_two_kernels_started_at_once_in_one_directory_each_answer_on_their_own_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's kernels use socket files in a private folder each. (With jupyter_client's
    default, both would be ``kernel-ipc-1``… in the working directory, and one client would meet
    the other's kernel: "Invalid Signature", seen once when two tests ran notebooks at once.)"""
    import asyncio  # noqa: PLC0415

    from jupyter_client.manager import AsyncKernelManager  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    folders = [tmp_path / "a", tmp_path / "b"]
    for f in folders:
        f.mkdir(mode=0o700)

    async def answer(folder: Path) -> tuple[str, str]:
        km = AsyncKernelManager(kernel_name="python3", config=runner.ipc_config(folder))
        await km.start_kernel(extra_arguments=runner.KERNEL_ARGUMENTS)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            msg_id = kc.execute("import os; print(os.getpid())")
            while True:
                msg = await kc.get_iopub_msg(timeout=30)
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                    return km.ip, msg["content"]["text"].strip()
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    async def both() -> list[tuple[str, str]]:
        return list(await asyncio.gather(*(answer(f) for f in folders)))

    (ip_a, pid_a), (ip_b, pid_b) = asyncio.run(both())
    assert ip_a == str(folders[0] / "kernel") and ip_b == str(folders[1] / "kernel")
    assert pid_a != pid_b  # each client talked to its own kernel
    assert not list(tmp_path.glob("kernel-ipc*"))  # nothing in the working directory


@pytest.mark.parametrize("ours", [True, False])
def test_the_kernels_own_tracebacks_stay_off_the_runners_stderr(tmp_path: Path, ours: bool) -> None:
    """A tornado callback that fails inside the kernel (as ipykernel's shutdown race does: a
    "Socket operation on non-socket" traceback, seen once in CI after a refused gate) is logged
    by the kernel process to the stderr it inherits, the DBA's terminal. With the runner's kernel
    arguments it is not; without them (the control), it is."""
    from jupyter_client.manager import KernelManager  # noqa: PLC0415

    folder = tmp_path / "k"
    folder.mkdir(mode=0o700)
    err = tmp_path / "stderr"
    km = KernelManager(kernel_name="python3", config=runner.ipc_config(folder))
    with err.open("wb") as sink:
        km.start_kernel(extra_arguments=runner.KERNEL_ARGUMENTS if ours else [], stderr=sink)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            code = (
                "from tornado.ioloop import IOLoop\n"
                "def fail(): raise RuntimeError('zdm-kernel-callback-failed')\n"
                "IOLoop.current().add_callback(fail)"
            )
            reply = kc.execute_interactive(code, timeout=30)
            assert reply["content"]["status"] == "ok"
            kc.execute_interactive("import time; time.sleep(0.5)", timeout=30)  # the callback runs
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    logged = err.read_text()
    assert ("zdm-kernel-callback-failed" in logged) is not ours, logged

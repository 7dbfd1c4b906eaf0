"""Prepared (interactive) notebooks on a real kernel, without a browser: what their outputs hold.

papermill runs a notebook that ``zdm prepare`` wrote (``headless = False``), so widgets are created
and sent as they are to JupyterLab; the saved notebook shows which outputs each cell made.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from zdm_runbook.notebook import runner

from .sessions import Blocker
from .test_browser import _orders, _quietly

TWO_COLUMNS = """
change: orders-two
operations:
  - change_type: {table: orders, column: customer_id, new_column: customer_ref, type: bigint,
                  using: "customer_id::bigint", reverse: "customer_ref::int"}
  - change_type: {table: orders, column: note, new_column: note_v2, type: "varchar(200)",
                  using: "note::varchar(200)", reverse: "note_v2::text"}
"""
WIDGET = "application/vnd.jupyter.widget-view+json"


def _cell(nb: Any, code: str) -> Any:
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.strip() == code)


def _run(notebook: Path) -> Any:
    with contextlib.suppress(PapermillExecutionError):  # a cell that fails is what some tests check
        papermill.execute_notebook(str(notebook), str(notebook), progress_bar=False, kernel_name="python3")
    return nbformat.read(notebook, as_version=4)


@pytest.fixture
def spec(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZDM_DSN", db)
    _orders(db, 20_000)
    path = tmp_path / "two.yaml"
    path.write_text(TWO_COLUMNS)
    return path


def test_two_backfills_have_a_view_and_a_chart_each_and_count_rows_per_table(spec: Path) -> None:
    assert runner.run("expand", spec, {"signoff_by": "ci"}, spec.parent / "archive").exit_code == 0
    notebook = runner.prepare("migrate", spec, {"batch_size": "1000"}, spec.parent / "migrate.ipynb")
    nb = _run(notebook)
    plan = "".join(o.get("data", {}).get("text/html", "") for o in _cell(nb, "rb.show_plan()").outputs)
    assert plan.count("one short transaction per batch") == 2 and "in one transaction" not in plan
    outputs = _cell(nb, "rb.execute()").outputs
    views = [o for o in outputs if WIDGET in o.get("data", {})]
    charts = [o["metadata"]["image/png"]["alt"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(views) == 2, "one progress view per backfill, not one bar reused"
    assert charts == [
        "chart of the backfill 01-change_type-backfill of public.orders (orders-two)",
        "chart of the backfill 02-change_type-backfill of public.orders (orders-two)",
    ]
    summary = "".join(o.get("text", "") for o in _cell(nb, "rb.summary()").outputs)
    assert "public.orders backfilled (20,000 rows, 2 backfill steps)" in summary
    assert "40,000" not in summary


def _one_error(nb: Any, code: str) -> tuple[str, str]:
    """The cell's one error (its rendered traceback) and everything else it printed."""
    outputs = _cell(nb, code).outputs
    (error,) = [o for o in outputs if o.output_type == "error"]
    shown = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    return "\n".join(error.traceback), shown


def test_a_closed_gate_is_one_message_without_internal_frames(spec: Path) -> None:
    nb = _run(runner.prepare("migrate", spec, {}, spec.parent / "migrate.ipynb"))
    error, printed = _one_error(nb, "rb.gate()")
    assert "GateRefused" in error and "gate to migrate: closed" in error
    assert "gate to migrate" not in printed, "the reason was printed, then raised again"
    assert "runbook.py" not in error and "Traceback" not in error and len(error.splitlines()) <= 4


def test_a_no_go_preflight_is_one_message_after_its_evidence(spec: Path, db: str) -> None:
    notebook = runner.prepare("expand", spec, {}, spec.parent / "expand.ipynb")
    # The holder is released first (a with statement exits in reverse): then the queued LOCK gets it.
    with Blocker(db, app="migration") as alter, Blocker(db, "SELECT 1 FROM orders LIMIT 1", app="report"):
        waiting = threading.Thread(
            target=_quietly, args=(alter.conn, "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        )
        waiting.start()
        nb = _run(notebook)
    waiting.join(timeout=30)
    error, printed = _one_error(nb, "rb.preflight()")
    assert "PreflightRefused" in error and "NO-GO" in error and "Nothing ran" in error
    assert "NO-GO" not in printed and "runbook.py" not in error and "Traceback" not in error
    shown = "".join(o.get("data", {}).get("text/html", "") for o in _cell(nb, "rb.preflight()").outputs)
    assert "report" in shown and "migration" in shown  # the evidence: who holds, who waits

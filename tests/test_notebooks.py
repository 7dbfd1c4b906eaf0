"""The DBA notebooks in ``notebooks/``, executed by papermill on a real kernel: the lock inspector
names a real blocker, and the overview lists a change's phases and draws its backfill chart."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

from zdm_runbook.notebook import runner
from zdm_runbook.notebook.templates import DBA_NOTEBOOKS, build_dba

from .sessions import Blocker
from .test_runbook import REF, _outputs

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", sorted(DBA_NOTEBOOKS))
def test_committed_dba_notebooks_are_generated_and_without_outputs(name: str) -> None:
    committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert committed == build_dba(name), "python -m zdm_runbook.notebook.templates rewrites it"
    assert all(not c.outputs for c in committed.cells if c.cell_type == "code")


def _execute(name: str, out: Path, **parameters: object) -> str:
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        progress_bar=False,
        kernel_name="python3",
    )
    return _outputs(out)


def test_lock_inspector_names_the_session_that_blocks(orders_env: str, tmp_path: Path) -> None:
    with Blocker(orders_env, "LOCK TABLE orders IN SHARE MODE", app="nightly-report"):
        text = _execute("lock-inspector", tmp_path / "locks.ipynb", tables="orders", interactive=False)
    assert "Locks held and queued on the tables" in text
    assert "nightly-report" in text and "ShareLock" in text
    assert "GO: preflight on orders" in text


def test_overview_lists_changes_and_draws_backfill_charts(orders_env: str, tmp_path: Path) -> None:
    spec = tmp_path / "change.yaml"
    spec.write_text(REF)
    for phase in ("expand", "migrate"):
        assert runner.run(phase, spec, {"signoff_by": "alice"}, tmp_path / "archive").exit_code == 0
    out = tmp_path / "overview.ipynb"
    text = _execute("overview", out)
    assert "orders-ref" in text and "alice" in text and "migrate-" in text
    images = [
        o
        for c in nbformat.read(out, as_version=4).cells
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 1

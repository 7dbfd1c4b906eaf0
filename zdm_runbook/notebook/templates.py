"""The four phase notebooks: where they are, and how they are written.

The templates in ``templates/`` and the DBA notebooks in ``notebooks/`` are generated from this
module (``python -m zdm_runbook.notebook.templates`` rewrites them) so their ``parameters`` cells always match
:data:`zdm_runbook.notebook.parameters.PARAMETERS`; a test checks that the committed files are what this
module writes. Every code cell is one or two lines that call :mod:`zdm_runbook.notebook.runbook`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zdm_runbook.core.errors import ConfigError
from zdm_runbook.notebook.parameters import declared
from zdm_runbook.spec.model import Phase

_PACKAGE = Path(__file__).resolve().parent.parent  # zdm_runbook/
# Installed wheels carry the templates inside the package; a source checkout keeps them beside it.
_SEARCH = (_PACKAGE / "phase_templates", _PACKAGE.parent / "templates")

ABOUT = {
    Phase.EXPAND: (
        "Expand: add the new shape beside the old",
        "Adds nullable or defaulted columns, new tables, indexes built `CONCURRENTLY`, and the"
        " dual-write triggers that keep the old and new columns equal on every write. The old app"
        " (N-1) and the new app (N) both keep working afterwards.",
        [
            "The spec is reviewed: `zdm plan SPEC` and `zdm lint` are clean.",
            "No deploy of the app is in progress; the old version runs everywhere.",
            "Backups / point-in-time recovery are current.",
            "You know who may end a session that blocks the DDL (the preflight names them).",
        ],
    ),
    Phase.MIGRATE: (
        "Migrate: backfill existing rows, then verify",
        "Fills the new shape for existing rows in bounded batches: one short transaction per batch,"
        " checkpointed in `zdm.backfills`, sized to a target duration and throttled by replica lag,"
        " lock queues and app load. The dual-write triggers keep new writes consistent meanwhile."
        " Interrupting is safe: a re-run resumes from the last committed batch. The whole table is"
        " verified at the end.",
        [
            "expand is complete and signed off (the gate checks it).",
            "Replica lag and disk headroom are watched: a backfill writes every row once.",
            "You know how to pause and resume: `zdm backfill pause CHANGE` / `resume CHANGE`.",
        ],
    ),
    Phase.SWITCH: (
        "Switch: enforce the new shape; the app moves its reads",
        "Validates constraints added `NOT VALID`, proves `NOT NULL` through a validated CHECK, and"
        " attaches unique constraints to indexes built concurrently. After this phase, deploy the"
        " app version that reads the new shape; the old version still works.",
        [
            "migrate is complete, verified and signed off (the gate checks it).",
            "The app version that reads the new shape is ready to deploy after this run.",
        ],
    ),
    Phase.CONTRACT: (
        "Contract: remove the old shape",
        "Drops the dual-write triggers, the old columns and the old indexes. Only the new app (N)"
        " must work afterwards, so this runs only after one full deploy cycle since switch, when no"
        " instance of the old app can still be running.",
        [
            "No instance of the old app runs anymore: check your deploy tool.",
            "switch was signed off at least one deploy cycle ago (the gate checks it).",
            "pg_stat_statements shows no statement using the old columns (the gate watches it"
            " where the extension is loaded).",
            "Rolling back after contract means restoring the old columns from a backup: be sure.",
        ],
    ),
}

CELLS = (
    (
        "Where this runs",
        "The server, the database, this run's id and parameters, and the change's status in the ledger.",
        'from zdm_runbook import runbook\n\nrb = runbook.start("{phase}", globals())',
    ),
    ("Gate", "What must be true before this phase may run; a closed gate changes nothing.", "rb.gate()"),
    (
        "Preflight lock report",
        "Who holds or waits for locks on this phase's tables right now.",
        "rb.preflight()",
    ),
    ("Plan", "Each step's SQL, its transaction mode, and what it locks.", "rb.show_plan()"),
    (
        "Execute",
        "Guarded execution: lock_timeout per attempt, retries with backoff, blockers recorded."
        " A backfill shows its progress live and its chart at the end.",
        "rb.execute()",
    ),
    ("Compatibility", "The old and the new app's queries against the schema as it is now.", "rb.compat()"),
    ("Summary", "The run is recorded as succeeded; what comes next.", "rb.summary()"),
    (
        "Sign-off",
        "Headless: signed off when `signoff_by` is given, else awaiting `zdm signoff`."
        " In JupyterLab: a form.",
        "rb.sign_off()",
    ),
)


# The DBA notebooks in notebooks/: (title and purpose, parameters cell, [(heading, code)]).
DBA_NOTEBOOKS = {
    "lock-inspector": (
        "# Lock inspector\n\nWho blocks whom right now, with each session's query; sessions waiting"
        " for locks; long-running and idle-in-transaction sessions; and, for the tables you name, the"
        " locks held and queued on them with the preflight's go / no-go. Read only. In JupyterLab the"
        " Refresh button re-reads everything; elsewhere re-run the last cell.",
        'dsn_env = "ZDM_DSN"  # NAME of the environment variable holding the DSN (never the DSN)\n'
        'tables = ""  # comma-separated tables to check, e.g. "orders, public.customers"\n'
        'long_after = "30s"  # a transaction older than this counts as long-running\n'
        "interactive = True  # False under papermill: no button",
        [
            (
                "Live view",
                "from zdm_runbook.notebook.dashboards import LockInspector\n\n"
                "LockInspector(dsn_env, tables, long_after).refresh(interactive)",
            )
        ],
    ),
    "overview": (
        "# Changes overview\n\nEvery change in this database's ledger (schema `zdm`): each phase's"
        " steps, last run with its archived notebook, and sign-off; then the chart of every backfill,"
        " drawn from its committed batches. Read only.",
        'dsn_env = "ZDM_DSN"  # NAME of the environment variable holding the DSN (never the DSN)',
        [
            ("Changes", "from zdm_runbook.notebook import dashboards\n\ndashboards.overview(dsn_env)"),
            ("Backfills", "dashboards.backfill_charts(dsn_env);"),
        ],
    ),
}


def template_path(phase: Phase | str) -> Path:
    """The template notebook of ``phase``."""
    name = f"{Phase(phase).value}.ipynb"
    for folder in _SEARCH:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"the {name} template is missing (looked in {', '.join(map(str, _SEARCH))})")


def parameters_cell(phase: Phase, values: Mapping[str, Any] | None = None, head: str = "") -> str:
    """The ``parameters`` cell: one line per parameter with its help, ``values`` over the defaults."""
    given = values or {}
    lines = [head or "# Parameters: `zdm run` and `zdm prepare` replace these. The DSN is never one of them."]
    for par in declared(phase).values():
        value = given.get(par.name, par.default)
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        lines.append(f"{par.name} = {text}  # {par.help}")  # as ruff formats it
    return "\n".join(lines)


def prepared(phase: Phase | str, values: Mapping[str, Any], when: str) -> Any:
    """The template of ``phase`` with ``values`` written into its one ``parameters`` cell (papermill
    would add a second cell after it, leaving the template's defaults above the values that count)."""
    p = Phase(phase)
    nb = build(p)
    head = f"# Parameters, written by `zdm prepare` at {when}: edit them here, or prepare again."
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = parameters_cell(p, values, head)
    return nb


def build(phase: Phase | str) -> Any:
    """The template notebook of ``phase``, without outputs."""
    p = Phase(phase)
    title, about, checklist = ABOUT[p]
    import nbformat  # noqa: PLC0415 - slow to import (jsonschema); only to write notebooks

    v4: Any = nbformat.v4  # nbformat is untyped
    cells = [
        v4.new_markdown_cell(
            f"# {title}\n\n{about}\n\n## Operator's checklist\n\n"
            + "\n".join(f"- [ ] {c}" for c in checklist)
        ),
        v4.new_code_cell(parameters_cell(p), metadata={"tags": ["parameters"]}),
    ]
    for heading, text, code in CELLS:
        cells.append(v4.new_markdown_cell(f"## {heading}\n\n{text}"))
        cells.append(v4.new_code_cell(code.format(phase=p.value)))
    return _finish(v4.new_notebook(cells=cells), p.value)


def build_dba(name: str) -> Any:
    """The DBA notebook ``name`` of ``notebooks/``, without outputs."""
    intro, parameters, cells = DBA_NOTEBOOKS[name]
    import nbformat  # noqa: PLC0415

    v4: Any = nbformat.v4
    nb = v4.new_notebook(
        cells=[v4.new_markdown_cell(intro), v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    )
    for heading, code in cells:
        nb.cells += [v4.new_markdown_cell(f"## {heading}"), v4.new_code_cell(code)]
    return _finish(nb, name)


def _finish(nb: Any, prefix: str) -> Any:
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for n, cell in enumerate(nb.cells):
        cell["id"] = f"{prefix}-{n}"
    return nb


def write(root: Path) -> list[Path]:
    """(Re)write the four templates into ``root/templates`` and the DBA notebooks into ``root/notebooks``."""
    import nbformat  # noqa: PLC0415

    written = []
    notebooks = [(root / "templates" / f"{p.value}.ipynb", build(p)) for p in Phase]
    notebooks += [(root / "notebooks" / f"{name}.ipynb", build_dba(name)) for name in DBA_NOTEBOOKS]
    for path, nb in notebooks:
        nbformat.write(nb, path)  # type: ignore[no-untyped-call]
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - a maintainer's command
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else _PACKAGE.parent):
        print(path)

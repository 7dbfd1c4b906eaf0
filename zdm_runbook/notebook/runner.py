"""``zdm run``: execute a phase's notebook headless with papermill and archive what happened.

The parameters are converted and checked before papermill starts (exit 2, nothing written). The
executed notebook is written to ``ARCHIVE/<change>/<phase>-<UTC time>.ipynb`` whether the phase
succeeds or not (papermill saves it before raising), with an HTML export beside it. Both are
scanned for passwords; one found is masked in place and fails the run loudly. The ledger's phase
run gets the notebook's path and SHA-256. Exit status: 0 succeeded, 1 failed, 2 bad input, 3 a
gate (or the preflight) refused.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg

from zdm_runbook import ledger
from zdm_runbook.core.connect import connect, find_secrets, redact, resolve_dsn
from zdm_runbook.core.errors import ExitCode, ParameterError, Problem, ZdmError, exit_code_of
from zdm_runbook.core.pooling import refuse_transaction_pooling
from zdm_runbook.notebook.parameters import RunParameters, coerce, validate
from zdm_runbook.notebook.templates import prepared, template_path
from zdm_runbook.spec.catalog import require_valid
from zdm_runbook.spec.model import Phase

EXIT_OK, EXIT_FAILED = ExitCode.OK, ExitCode.FAILED
# Parameters the command line may not set, and why: the runner sets them itself.
SET_BY_RUNNER = {
    "spec": "give it as the SPEC argument, not as a parameter",
    "headless": "is set by zdm run itself",
    "run_id": "is set by zdm run itself",
}


@dataclass
class RunResult:
    """What ``zdm run`` reports: outcome, exit status, the archived files and why it stopped."""

    phase: str
    change_id: str
    run_id: str
    exit_code: int
    outcome: str
    notebook: Path | None = None
    html: Path | None = None
    message: str = ""
    secrets: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.phase} of {self.change_id}: {self.outcome} (exit {self.exit_code})"]
        if self.message:
            lines += ["", redact(self.message).rstrip(), ""]
        lines += [
            f"  {kind}: {path}" for kind, path in (("notebook", self.notebook), ("html", self.html)) if path
        ]
        lines += [f"  SECRET FOUND AND MASKED: {s}" for s in self.secrets]
        return "\n".join(lines)


def check(phase: Phase | str, spec: Path, raw: Mapping[str, str], *, headless: bool = True) -> RunParameters:
    """``-p NAME VALUE`` strings converted and checked with the spec; :class:`ParameterError` or
    ``SpecError`` list every problem. ``headless`` and ``run_id`` are the runner's to set."""
    p = Phase(phase)
    problems = [Problem(n, SET_BY_RUNNER[n]) for n in raw if n in SET_BY_RUNNER]
    values: dict[str, Any] = {}
    for name, text in raw.items():
        if name in SET_BY_RUNNER:
            continue
        try:
            values[name] = coerce(p, name, text)
        except ParameterError as exc:
            problems += exc.problems
    if problems:
        raise ParameterError(problems)
    values.update(spec=str(spec.resolve()) if spec.is_file() else str(spec), headless=headless)
    if headless:
        values["run_id"] = str(uuid.uuid4())
    return validate(p, values)


def archive_paths(
    archive: Path, change_id: str, phase: Phase, now: datetime | None = None
) -> tuple[Path, Path]:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = archive / change_id
    return folder / f"{phase.value}-{stamp}.ipynb", folder / f"{phase.value}-{stamp}.html"


def run(
    phase: Phase | str,
    spec: Path,
    raw: Mapping[str, str],
    archive: Path,
    *,
    stream: IO[str] | None = None,
    kernel_name: str = "python3",
    log_cells: bool = True,
) -> RunResult:
    """Run one phase headless and archive it; bad input raises before anything is written.

    ``stream`` receives the notebook's output as it runs; ``log_cells`` also sends it, with a line
    per cell, to papermill's logger (off where that logger is already routed to ``stream``'s end).
    """
    params = check(phase, spec, raw)
    # An unset variable, or tables, columns, types or expressions this database does not have, are
    # bad input: refused before the kernel starts, with nothing written.
    conninfo = resolve_dsn(env=params.values["dsn_env"])
    refuse_transaction_pooling(conninfo)
    require_valid(conninfo, params.plan.change)
    import papermill  # noqa: PLC0415 - papermill and nbconvert load slowly: only once input is good
    from papermill.exceptions import PapermillExecutionError  # noqa: PLC0415

    notebook, html = archive_paths(archive, params.plan.change.id, params.phase)
    notebook.parent.mkdir(parents=True, exist_ok=True)
    given = {k: v for k, v in params.values.items() if k in raw or k in SET_BY_RUNNER}
    result = RunResult(params.phase.value, params.plan.change.id, str(params.run_id), EXIT_OK, "succeeded")
    sockets = Path(tempfile.mkdtemp(prefix="zdm-kernel-"))  # private (0700): this kernel's sockets
    try:
        papermill.execute_notebook(
            str(template_path(params.phase)),
            str(notebook),
            parameters=given,
            kernel_name=kernel_name,
            progress_bar=False,
            log_output=stream is not None and log_cells,
            stdout_file=stream,
            stderr_file=stream,
            cwd=os.getcwd(),
            # Unix sockets between runner and kernel, not TCP on localhost (no plain-text traffic).
            config=ipc_config(sockets),
            extra_arguments=KERNEL_ARGUMENTS,
        )
    except PapermillExecutionError as exc:
        # The classes a notebook raises are all reachable from the runbook it imports; the kernel's
        # exception reaches us by name only, and its class says which exit status it means.
        import zdm_runbook.runbook  # noqa: F401, PLC0415 - loaded once a notebook has stopped on an error

        result.exit_code = exit_code_of(exc.ename)
        result.outcome = "refused" if result.exit_code == ExitCode.REFUSED else "failed"
        result.message = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # the kernel died, or could not start
        result.exit_code, result.outcome = EXIT_FAILED, "failed"
        result.message = f"the notebook did not finish: {type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    if params.values["dry_run"] and result.exit_code == EXIT_OK:
        result.outcome = "dry run"
    if notebook.is_file():
        result.notebook = notebook
        result.html = export_html(notebook, html)
        _scan(result)
        _record(result, notebook, params)
    return result


# The kernel's own logging stays off the DBA's terminal (the kernel inherits our stderr). When
# jupyter_client interrupts the kernel before shutting it down, ipykernel logs that as an ERROR;
# and a control message handled while the kernel closes its sockets makes tornado log a
# "Socket operation on non-socket" traceback (seen once in CI, after a refused gate; ipykernel
# 7.4.0's race, ipython/ipykernel#1518 fixed one like it). Real failures reach us as the cell's
# exception, in the archived notebook. (50: logging.CRITICAL.)
KERNEL_ARGUMENTS = [
    "--IPKernelApp.log_level=CRITICAL",
    "--IPKernelApp.exec_lines=import logging; logging.getLogger('tornado.application').setLevel(50)",
]


def ipc_config(folder: Path) -> Any:
    """Kernel sockets as files in ``folder``. Without an ``ip``, jupyter_client names them
    ``kernel-ipc-1``, ``-2``, … relative to the working directory, so two runs started in one
    directory at once (a fleet's targets, parallel tests) bound the same sockets and each
    client met the other's kernel ("Invalid Signature")."""
    from traitlets.config import Config  # noqa: PLC0415

    return Config({"KernelManager": {"transport": "ipc", "ip": str(folder / "kernel")}})


def export_html(notebook: Path, target: Path) -> Path:
    """The executed notebook as one self-contained HTML page (charts embedded as PNG)."""
    import nbformat  # noqa: PLC0415
    from nbconvert import HTMLExporter  # noqa: PLC0415

    nb = nbformat.read(notebook, as_version=4)  # type: ignore[no-untyped-call]
    exporter = HTMLExporter()  # type: ignore[no-untyped-call]
    exporter.log = _QUIET  # it warns about the alt texts that _alt_texts() puts back
    body, _ = exporter.from_notebook_node(nb)
    target.write_text(_alt_texts(nb, body), encoding="utf-8")
    return target


_QUIET = logging.getLogger("zdm_runbook.html")
_QUIET.setLevel(logging.ERROR)
_NO_ALT = 'alt="No description has been provided for this image"'


def _alt_texts(nb: Any, body: str) -> str:
    """nbconvert's HTML template drops the ``alt`` an image output carries; put each one back."""
    alts = iter(
        str(out.get("metadata", {}).get("image/png", {}).get("alt") or "")
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    )

    def put_back(match: re.Match[str]) -> str:
        alt = next(alts, "")
        return f'alt="{html.escape(alt)}"' if alt else match[0]

    return re.sub(_NO_ALT, put_back, body)


def _scan(result: RunResult) -> None:
    """Fail loudly on a password in the archive; mask it in place so it does not stay on disk."""
    for path in (result.notebook, result.html):
        if path is None:
            continue
        text = path.read_text(encoding="utf-8")
        found = find_secrets(text)
        if not found:
            continue
        path.write_text(redact(text), encoding="utf-8")
        result.secrets += [f"{path.name} line {line}: {kind}" for line, kind in found]
    if result.secrets:
        result.exit_code, result.outcome = EXIT_FAILED, "failed"
        result.message = (
            result.message + "\n" if result.message else ""
        ) + "a password was found in the archived run and masked there; find what printed it"


def _record(result: RunResult, notebook: Path, params: RunParameters) -> None:
    """Attach the notebook to its ledger row (if the run got that far)."""
    digest = hashlib.sha256(notebook.read_bytes()).hexdigest()
    try:
        with connect(env=params.values["dsn_env"], autocommit=True) as conn:
            if ledger.phase_run_recorded(conn, uuid.UUID(result.run_id)):
                ledger.record_notebook(
                    conn, uuid.UUID(result.run_id), str(notebook.resolve()), digest, result.message or None
                )
    except (ZdmError, psycopg.Error) as exc:
        result.message += f"\n(the ledger could not record the notebook: {redact(str(exc))})"


def prepare(phase: Phase | str, spec: Path, raw: Mapping[str, str], output: Path | None) -> Path:
    """A notebook of ``phase`` with these parameters filled in, to open and run in JupyterLab."""
    import nbformat  # noqa: PLC0415 - slow to import: only once the input is good

    params = check(phase, spec, raw, headless=False)
    target = output or Path(f"{params.plan.change.id}-{params.phase.value}.ipynb")
    given = {k: v for k, v in params.values.items() if k in raw or k in ("spec", "headless")}
    now = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    nbformat.write(prepared(params.phase, given, now), str(target))  # type: ignore[no-untyped-call]
    return target

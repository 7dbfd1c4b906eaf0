"""The architecture holds: layers (import-linter), one owner of the ledger's SQL, one reader per
operation, exit codes carried by the exceptions, modules of a readable size, the notebooks' import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from zdm_runbook.core.errors import ConfigError, ExitCode, ParameterError, SpecError, ZdmError, exit_code_of
from zdm_runbook.spec.operations import Operation
from zdm_runbook.spec.readers import READ, READERS

PACKAGE = Path(__file__).resolve().parent.parent / "zdm_runbook"
MAX_LINES = 420
# SQL naming a ledger table: what only zdm_runbook/ledger may run.
LEDGER_SQL = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+zdm\.[a-z_]+", re.I)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_layers_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], capture_output=True, text=True, check=False, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_only_the_ledger_runs_sql_on_schema_zdm() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}: {m.group(0)}"
        for path in _modules()
        if path.parent.name != "ledger"
        for m in LEDGER_SQL.finditer(path.read_text())
    ]
    assert offenders == []


def test_no_module_is_too_long_to_read() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_package_says_what_it_is_and_what_it_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        text = init.read_text()
        assert text.startswith('"""') and "import" in text.split('"""')[1], init


def test_every_operation_has_exactly_one_reader() -> None:
    assert set(READ) == set(get_args(Operation))
    assert sorted(READERS) == sorted(cls.NAME for cls in get_args(Operation))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (SpecError, ExitCode.BAD_INPUT),
        (ParameterError, ExitCode.BAD_INPUT),
        (ConfigError, ExitCode.BAD_INPUT),
        (ZdmError, ExitCode.FAILED),
    ],
)
def test_errors_carry_their_exit_code(error: type[ZdmError], code: ExitCode) -> None:
    assert error.exit_code == code
    assert exit_code_of(error.__name__) == code


def test_a_notebooks_error_maps_to_its_exit_code_by_name() -> None:
    import zdm_runbook.runbook  # noqa: F401, PLC0415 - defines every class a notebook can raise

    assert exit_code_of("GateRefused") == ExitCode.REFUSED
    assert exit_code_of("PreflightRefused") == ExitCode.REFUSED
    assert exit_code_of("ParameterError") == ExitCode.BAD_INPUT  # a SpecError subclass
    assert exit_code_of("StepFailed") == ExitCode.FAILED
    assert exit_code_of("KeyboardInterrupt") == ExitCode.FAILED  # not ours


def test_the_notebooks_import_still_works_in_a_fresh_interpreter() -> None:
    code = "from zdm_runbook import runbook; print(runbook.start.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "zdm_runbook.notebook.runbook"

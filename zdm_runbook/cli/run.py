"""``zdm run`` and ``zdm prepare``: a phase's notebook, headless and archived, or ready to open."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from zdm_runbook.cli.common import handles_errors
from zdm_runbook.notebook.parameters import declared
from zdm_runbook.spec.model import Phase

_PHASE = click.argument("phase", type=click.Choice([p.value for p in Phase]))
_SPEC = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
_PARAM = click.option(
    "-p",
    "--parameter",
    "parameters",
    type=(str, str),
    multiple=True,
    metavar="NAME VALUE",
    help="Set a notebook parameter (repeatable); see the list below.",
)


_DSN_ENV = click.option(
    "--dsn-env",
    metavar="VAR",
    help="Environment variable holding the DSN (default ZDM_DSN): the same as -p dsn_env VAR, as"
    " in zdm plan and zdm lint.",
)

F = TypeVar("F", bound=Callable[..., Any])


def _archive(default: Path) -> Callable[[F], F]:
    return click.option(
        "--archive",
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=True,
        help="Folder of the archive: each run is written to ARCHIVE/<change>/<phase>-<UTC time>.ipynb"
        " and .html.",
    )


def _parameter_help() -> str:
    lines = ["\b", "Parameters (per phase):"]
    seen: dict[str, str] = {}
    for p in Phase:
        for name, par in declared(p).items():
            only = "" if len(par.phases) == len(Phase) else f" [{'/'.join(x.value for x in par.phases)}]"
            seen.setdefault(name, f"  {name} = {par.default!r}{only}: {par.help}")
    return "\n".join(lines + list(seen.values()))


def _as_dict(parameters: tuple[tuple[str, str], ...], dsn_env: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in parameters:
        if name in out:
            raise click.BadParameter(f"{name} is given twice", param_hint="-p")
        out[name] = value
    if dsn_env is not None:
        if out.get("dsn_env", dsn_env) != dsn_env:
            raise click.BadParameter(
                f"--dsn-env {dsn_env} and -p dsn_env {out['dsn_env']} disagree: give one",
                param_hint="--dsn-env",
            )
        out["dsn_env"] = dsn_env
    return out


@click.command("run", epilog=_parameter_help())
@_PHASE
@_SPEC
@_PARAM
@_DSN_ENV
@_archive(Path("archive"))
@click.option("--quiet", is_flag=True, help="Do not stream the notebook's output while it runs.")
@handles_errors
def run_cmd(
    phase: str,
    spec: Path,
    parameters: tuple[tuple[str, str], ...],
    dsn_env: str | None,
    archive: Path,
    quiet: bool,
) -> None:
    """Run PHASE of the change in SPEC: its notebook, headless, through papermill.

    Every parameter is checked before anything runs. The executed notebook and its HTML twin are
    archived also when the phase fails, scanned for passwords, and recorded in the ledger with
    their SHA-256. The DSN comes from the variable named by --dsn-env (default ZDM_DSN).

    Exit status: 0 the phase succeeded; 1 it failed (the notebook names the step and SQLSTATE);
    2 bad input (spec, parameter, unset DSN variable); 3 a gate or the preflight refused.
    """
    from zdm_runbook.notebook.runner import run  # noqa: PLC0415 - papermill loads slowly

    values = _as_dict(parameters, dsn_env)
    result = run(phase, spec, values, archive, stream=None if quiet else sys.stdout)
    click.echo(str(result), err=result.exit_code != 0)
    sys.exit(result.exit_code)


@click.command("prepare", epilog=_parameter_help())
@_PHASE
@_SPEC
@_PARAM
@_DSN_ENV
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the notebook (default: <change>-<phase>.ipynb here).",
)
@handles_errors
def prepare_cmd(
    phase: str, spec: Path, parameters: tuple[tuple[str, str], ...], dsn_env: str | None, output: Path | None
) -> None:
    """Write PHASE's notebook for SPEC with the parameters filled in, to open in JupyterLab.

    Run it cell by cell: it shows the gate, the lock report and the plan before anything runs,
    a live backfill bar, and a sign-off form at the end.
    """
    from zdm_runbook.notebook.runner import prepare  # noqa: PLC0415

    path = prepare(phase, spec, _as_dict(parameters, dsn_env), output)
    click.echo(f"{path}\nopen it with: jupyter lab {path}")


@click.command("demo")
@click.option(
    "--rows",
    type=click.IntRange(1000, 50_000_000),
    default=200_000,
    show_default=True,
    help="Orders to create.",
)
@_archive(Path("zdm-demo-archive"))
@click.option("--keep", is_flag=True, help="Leave the demo database running, and print how to connect.")
@click.option(
    "--change",
    "which",
    type=click.Choice(["type", "key"]),
    default="type",
    show_default=True,
    help="type: orders.customer_id (int) moves to customer_ref (bigint), plus a NOT NULL currency."
    " key: customers.id, a serial primary key that orders reference, becomes bigint.",
)
@handles_errors
def demo_cmd(rows: int, archive: Path, keep: bool, which: str) -> None:
    """Run a whole change, all four phases through zdm run, under live traffic.

    On a throw-away embedded PostgreSQL: customers and orders, and the change --change names. An
    old-app and (after expand) a new-app generator insert, update and select throughout, and
    pgbench adds read load; the old app stops before contract. Exit 0 only with every phase
    succeeded, 0 app errors, 0 pgbench failures and every acknowledged write present.
    """
    from zdm_runbook.demo.scenario import Demo  # noqa: PLC0415 - papermill and pandas load slowly
    from zdm_runbook.demo.scenarios import SCENARIOS  # noqa: PLC0415

    sys.exit(Demo(rows, archive, keep, echo=click.echo, scenario=SCENARIOS[which]).run())

"""The ``zdm`` command: plan a change, manage the local PostgreSQL server; ``zdm locks`` and
``zdm backfill`` (the commands on the live database) are in :mod:`zdm_runbook.cli.live`.

Exit status: 0 success; 1 a failure while running; 2 bad input (spec, parameter, argument);
3 a no-go verdict (``zdm locks`` with tables).
Every message that can carry connection details goes through :func:`~zdm_runbook.core.connect.redact`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from zdm_runbook import __version__
from zdm_runbook.cli.common import EXIT_FAILED, handles_errors
from zdm_runbook.cli.live import backfill_group, locks_cmd, signoff_cmd, status_cmd
from zdm_runbook.cli.run import demo_cmd, prepare_cmd, run_cmd
from zdm_runbook.core.connect import connect
from zdm_runbook.core.errors import DatabaseError, SpecError
from zdm_runbook.demo.embedded import DEBIAN_PG15_BIN, LocalServer
from zdm_runbook.inspect.left_behind import change_warnings
from zdm_runbook.lint.analysis import step_locks
from zdm_runbook.plan.planner import Plan, build_plan
from zdm_runbook.spec.catalog import check_change
from zdm_runbook.spec.change import load_change
from zdm_runbook.spec.model import Phase


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zdm")
def main() -> None:
    """Zero-downtime PostgreSQL schema changes by expand and contract.

    A change is a YAML spec; it runs as four phases (expand, migrate, switch, contract), each a
    notebook. Connections come from an environment variable (default ZDM_DSN) or libpq's own
    environment; a password is never passed on the command line.
    """


@main.command("plan")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--phase", type=click.Choice([p.value for p in Phase]), help="Show one phase only.")
@click.option(
    "--dsn-env",
    metavar="VAR",
    help="Also check the spec against the catalog of the database whose DSN is in $VAR.",
)
@handles_errors
def plan_cmd(spec: Path, as_json: bool, phase: str | None, dsn_env: str | None) -> None:
    """Show SPEC split into the four phases: each step's purpose, SQL, and transaction mode.

    Needs no database. With --dsn-env, the tables, columns, types and expressions of the spec
    are checked against that database first (read only). Exit 2 lists every problem of a bad spec;
    what each phase's preflight will say goes to stderr, with exit 0: a column that holds a key the
    change widens but stays narrower; a foreign key, index, constraint or view that a replaced
    column's contract would drop or fail on; row-level security that would hide rows from a
    backfill (a no-go then); the app's triggers and publications a backfill's updates set off; the
    app's BEFORE triggers that fire after the sync trigger; and what the subscribers of a published
    table need first.
    """
    change = load_change(spec)
    if dsn_env:
        with connect(env=dsn_env) as conn:
            problems = check_change(conn, change)
            if problems:
                raise SpecError(problems, str(spec))
            backfills = [st.backfill for st in build_plan(change).steps if st.backfill is not None]
            for _, warnings, _ in change_warnings(
                conn, change.operations, backfills=backfills, dual_write=change.dual_write
            ):  # and each preflight
                for reason in warnings:
                    click.echo(str(reason), err=True)
    plan = build_plan(change)
    if as_json:
        click.echo(plan.to_json())
    else:
        click.echo(format_plan(plan, Phase(phase) if phase else None))


def format_plan(plan: Plan, only: Phase | None = None) -> str:
    """The plan as text: per phase, numbered steps with description and SQL."""
    change = plan.change
    lines = [
        f"change {change.id}: {change.description}".rstrip(": "),
        f"dual write: {change.dual_write}",
    ]
    for phase in Phase:
        if only and phase != only:
            continue
        steps = plan.for_phase(phase)
        lines.append("")
        lines.append(f"== {phase.value} ({len(steps)} step{'s' if len(steps) != 1 else ''})")
        if not steps:
            lines.append("   no schema change; the application moves on (see the phase notebook)")
        for n, step in enumerate(steps, 1):
            mode = "outside a transaction" if not step.transactional else "in one transaction"
            lines.append(f"{n:>2}. {step.description}  [{step.key}, {mode}]")
            lines.extend(f"      {line}" for line in step.render().splitlines())
            lines.append(f"      -- {step_locks(step)}")
    return "\n".join(lines)


@main.group("db")
def db() -> None:
    """Manage the local PostgreSQL (embedded PostgreSQL 18, or --pg-bin for others).

    The server listens only on a private Unix socket. Use it with:
    export ZDM_DSN="$(zdm db url)"
    """


_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data folder (default: $ZDM_DATA_DIR or ~/.local/share/zdm-runbook/pg).",
)
_pg_bin = click.option(
    "--pg-bin",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help=f"PostgreSQL bin folder to use instead of the embedded one (e.g. {DEBIAN_PG15_BIN}).",
)


def _server(data_dir: Path | None, pg_bin: Path | None) -> LocalServer:
    return LocalServer.default(data_dir, pg_bin)


@db.command("start")
@_data_dir
@_pg_bin
@handles_errors
def db_start(data_dir: Path | None, pg_bin: Path | None) -> None:
    """Initialise (first time) and start the server; print its DSN. Does nothing if running."""
    server = _server(data_dir, pg_bin)
    dsn = server.start()
    click.echo(f"running: {server.version()} in {server.data_dir}", err=True)
    click.echo(dsn)


@db.command("stop")
@_data_dir
@_pg_bin
@handles_errors
def db_stop(data_dir: Path | None, pg_bin: Path | None) -> None:
    """Stop the server (fast shutdown: open sessions are disconnected)."""
    server = _server(data_dir, pg_bin)
    click.echo("stopped" if server.stop() else "not running")


@db.command("status")
@_data_dir
@_pg_bin
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@handles_errors
def db_status(data_dir: Path | None, pg_bin: Path | None, as_json: bool) -> None:
    """Say whether the server runs, where its data is, and its DSN. Exit 1 when not running."""
    server = _server(data_dir, pg_bin)
    running = server.running()
    info = {
        "running": running,
        "data_dir": str(server.data_dir),
        "initialized": server.initialized(),
        "version": server.version(),
        "dsn": server.dsn() if running else None,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            click.echo(f"{key:12} {value if value is not None else '-'}")
    if not running:
        sys.exit(EXIT_FAILED)


@db.command("url")
@_data_dir
@_pg_bin
@handles_errors
def db_url(data_dir: Path | None, pg_bin: Path | None) -> None:
    """Print the DSN of the running server (exit 1 if it is not running)."""
    server = _server(data_dir, pg_bin)
    if not server.running():
        raise DatabaseError(f"no server running in {server.data_dir}; start it with: zdm db start")
    click.echo(server.dsn())


def explain_lines(path: Path, analyses: list[Any]) -> list[str]:
    """``--explain``: one line per statement with its locks, the work under them, and its mode."""
    out = []
    for a in analyses:
        locks = "; ".join(
            f"{e.relation} {e.lock} ({e.work}{', blocks reads' if e.blocks_reads else ''}"
            f"{', blocks writes' if e.blocks_writes else ''})"
            for e in a.effects
        )
        mode = "" if a.in_transaction_ok else ", not in a transaction block"
        out.append(f"{path}:{a.line}: #{a.index} {a.kind}: {locks or 'no table lock'}{mode}")
    return out


@main.command("lint")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option(
    "--pg-version", type=click.IntRange(11, 18), help="Server major version [default: 18, or the server's]."
)
@click.option(
    "--phase", type=click.Choice([p.value for p in Phase]), help="Flag statements that do not belong here."
)
@click.option(
    "--dsn-env",
    metavar="VAR",
    help="Catalog mode: run each file on a shadow copy of the schema of the database whose DSN is in"
    " $VAR (a scratch database on that server, no rows, dropped afterwards), and let what PostgreSQL"
    " measurably does overrule the rules.",
)
@click.option(
    "--app-queries",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The old app's statements (';'-separated, %(name)s placeholders; a '-- params: {json}' comment"
    " gives sample values), checked against the migrated shadow copy. Needs --dsn-env.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--explain", is_flag=True, help="Also print each statement's locks, work and transaction mode.")
@handles_errors
def lint_cmd(
    files: tuple[Path, ...],
    pg_version: int | None,
    phase: str | None,
    dsn_env: str | None,
    app_queries: Path | None,
    fmt: str,
    explain: bool,
) -> None:
    r"""Check SQL migration FILES: what each statement locks, rewrites or breaks, in file order.

    Files as psql runs them: transaction blocks, SET and RESET of the timeouts, psql's
    meta-commands (skipped; \gexec, \i, \c and \if are named), psql's variables (as \set gives
    them; one only psql -v sets, or a Flyway placeholder ${name}, is read as its name and named),
    DO blocks and the PL/pgSQL functions and procedures the file defines and then calls (their
    statements are linted).

    Exit 0: nothing above info; 1: errors or warnings; 2: unusable input (a parse error names the
    line). Silence a rule for one statement with a comment in it: -- zdm: ignore RULE
    """
    from zdm_runbook.lint.app_queries import (  # noqa: PLC0415 - pglast loads only for lint
        from_pg_stat_statements,
        read_app_queries,
    )
    from zdm_runbook.lint.linter import lint_text  # noqa: PLC0415

    if app_queries and not dsn_env:
        raise click.BadParameter(
            "needs --dsn-env: the statements are checked on a shadow copy", param_hint="--app-queries"
        )
    app = read_app_queries(app_queries.read_text(), str(app_queries)) if app_queries else None
    version = pg_version or 18
    conn = connect(env=dsn_env, autocommit=True) if dsn_env else None
    if conn is not None and app is None:  # the app as pg_stat_statements saw it, when it is there
        app = from_pg_stat_statements(conn) or None
    all_findings = []
    try:
        if conn is not None and not pg_version:
            row = conn.execute("SHOW server_version_num").fetchone()
            version = int(str(row[0])) // 10000 if row else 18
        for path in files:
            analyses, findings = lint_text(path.read_text(), str(path), version, phase, conn, app)
            all_findings += findings
            if explain and fmt == "text":
                click.echo("\n".join(explain_lines(path, analyses)))
    finally:
        if conn is not None:
            conn.close()
    if fmt == "json":
        click.echo(json.dumps([f.to_dict() for f in all_findings], indent=2))
    else:
        for f in all_findings:
            where = f" [{f.relation}: {f.lock_mode}{', rewrite' if f.rewrites else ''}]" if f.relation else ""
            click.echo(f"{f.file}:{f.line}: {f.severity} {f.rule}: {f.message}{where}")
            click.echo(f"    instead: {f.safe_alternative}")
        failing = sum(f.severity != "info" for f in all_findings)
        click.echo(f"{len(files)} file(s), {failing} finding(s) above info", err=True)
    if any(f.severity != "info" for f in all_findings):
        sys.exit(EXIT_FAILED)


main.add_command(locks_cmd)
main.add_command(backfill_group)
main.add_command(signoff_cmd)
main.add_command(status_cmd)
main.add_command(run_cmd)
main.add_command(prepare_cmd)
main.add_command(demo_cmd)

"""The ``zdm`` command: plan a change, manage the local PostgreSQL server.

Exit status: 0 success; 1 a failure while running; 2 bad input (spec, parameter, argument);
3 a no-go verdict (``zdm locks`` with tables).
Every message that can carry connection details goes through :func:`~zdm_runbook.connect.redact`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .catalog import check_change
from .connect import connect, describe, redact, resolve_dsn
from .embedded import DEBIAN_PG15_BIN, LocalServer
from .errors import ConfigError, DatabaseError, SpecError, ZdmError
from .guard import parse_duration
from .plan import Plan, build_plan
from .spec import Phase, load_change

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_GO = 3
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(redact(message), err=True)
    sys.exit(code)


def handles_errors(fn: F) -> F:
    """Turn zdm-runbook's errors into a redacted message on stderr and the documented exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SpecError, ConfigError) as exc:
            _fail(f"error: {exc}", EXIT_BAD_INPUT)
        except ZdmError as exc:
            _fail(f"error: {exc}", EXIT_FAILED)
        return None

    return wrapper  # type: ignore[return-value]


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
    are checked against that database first (read only). Exit 2 lists every problem of a bad spec.
    """
    change = load_change(spec)
    if dsn_env:
        with connect(env=dsn_env) as conn:
            problems = check_change(conn, change)
        if problems:
            raise SpecError(problems, str(spec))
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
    return "\n".join(lines)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("locks")
@click.argument("tables", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print every view and the verdict as JSON.")
@click.option(
    "--dsn-env",
    metavar="VAR",
    help="Environment variable holding the DSN (default ZDM_DSN, else libpq's PG* variables).",
)
@click.option(
    "--long-after",
    default="30s",
    show_default=True,
    callback=_duration,
    help="A transaction this old holding a lock on TABLE is a no-go (e.g. 500ms, 30s, 2min).",
)
@handles_errors
def locks_cmd(tables: tuple[str, ...], as_json: bool, dsn_env: str | None, long_after: float) -> None:
    """Show who holds and who waits for locks now, and with TABLEs, whether a DDL may go.

    Views: the blocking tree (every waiting session under the one blocking it), long-running
    transactions, the locks held and queued on each TABLE, vacuums running on them, and replica
    lag. With TABLEs the preflight verdict follows: exit 0 for go, 3 for no-go, each reason
    naming the pid, application, state and age to act on. Read only: nothing is changed.
    """
    from .preflight import snapshot  # noqa: PLC0415 - pandas loads only for commands that need it

    dsn = resolve_dsn(env=dsn_env)
    with connect(dsn, autocommit=True) as conn:
        snap = snapshot(conn, tables, long_after_s=long_after)
    snap["server"] = describe(dsn)
    if as_json:
        click.echo(redact(json.dumps(snap_to_json(snap), indent=2, default=str, ensure_ascii=False)))
    else:
        click.echo(redact(format_snapshot(snap, long_after)))
    verdict = snap.get("verdict")
    if verdict is not None and not verdict.go:
        sys.exit(EXIT_NO_GO)


def snap_to_json(snap: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in snap.items():
        if hasattr(value, "to_dict") and hasattr(value, "columns"):
            out[key] = value.astype(object).where(value.notna(), None).to_dict("records")
        elif hasattr(value, "to_dict"):
            out[key] = value.to_dict()
        else:
            out[key] = value
    return out


def _one_line(text: object, width: int = 100) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_snapshot(snap: dict[str, Any], long_after: float) -> str:
    """The snapshot as text: the blocking tree with each query under its session, then the rest."""
    from .locks import human_seconds  # noqa: PLC0415

    lines = [f"server: {snap['server']} ({snap['version']})"]
    tree = snap["blocking_tree"]
    lines.append(f"\n== blocking tree ({len(tree)} session{'s' if len(tree) != 1 else ''})")
    if tree.empty:
        lines.append("   nobody waits for a lock")
    for r in tree.to_dict("records"):
        pad = "   " * (r["depth"] + 1)
        lines.append(f"{r['tree']}")
        lines.append(f"{pad}{_one_line(r['query'])}")
    old = snap["long_running"]
    lines.append(f"\n== transactions open longer than {human_seconds(long_after)} ({len(old)})")
    for r in old.to_dict("records"):
        lines.append(
            f"   pid {r['pid']} ({r['application_name'] or '?'}) {r['state']},"
            f" transaction {human_seconds(r['xact_age_s'])}: {_one_line(r['query'], 80)}"
        )
    if "table_locks" in snap:
        held = snap["table_locks"]
        lines.append(f"\n== locks on {', '.join(snap['tables']) or '(no existing table)'} ({len(held)})")
        for r in held.to_dict("records"):
            status = "holds " if r["granted"] else f"WAITS {human_seconds(r['wait_s'])} for "
            lines.append(
                f"   {r['relation']}: pid {r['pid']} ({r['application_name'] or '?'}) {status}{r['mode']},"
                f" {r['state']}, transaction {human_seconds(r['xact_age_s'])}"
            )
    vac = snap["autovacuum"]
    lines.append(f"\n== vacuum running ({len(vac)})")
    for r in vac.to_dict("records"):
        kind = "anti-wraparound " if r["wraparound"] else ""
        lines.append(f"   pid {r['pid']}: {kind}vacuum of {r['table']}, {r['phase']}")
    lag = snap["replication"]
    lines.append(f"\n== replicas ({len(lag)})")
    for r in lag.to_dict("records"):
        lines.append(
            f"   {r['application_name'] or r['client_addr']}: {r['state']}, replay lag"
            f" {human_seconds(r['replay_lag_s'])} ({r['replay_lag_bytes']} bytes)"
        )
    if snap.get("verdict") is not None:
        lines.append("")
        lines.append(str(snap["verdict"]))
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

"""``zdm locks`` and ``zdm backfill``: the commands that read and steer the live database."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from zdm_runbook.cli.common import DSN_ENV_HELP, EXIT_NO_GO, duration_arg, handles_errors
from zdm_runbook.core.connect import connect, describe, redact, resolve_dsn
from zdm_runbook.core.durations import human_seconds
from zdm_runbook.core.errors import ConfigError, ZdmError
from zdm_runbook.ledger import status
from zdm_runbook.ledger.checkpoints import backfills, control_backfill
from zdm_runbook.ledger.gates import check_gate
from zdm_runbook.ledger.signoffs import phase_state, sign_off
from zdm_runbook.ledger.status import Conn, ledger_ready
from zdm_runbook.spec.model import Phase


@click.command("locks")
@click.argument("tables", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print every view and the verdict as JSON.")
@click.option(
    "--dsn-env",
    metavar="VAR",
    help=DSN_ENV_HELP,
)
@click.option(
    "--long-after",
    default="30s",
    show_default=True,
    callback=duration_arg,
    help="A transaction this old holding a lock on TABLE is a no-go (e.g. 500ms, 30s, 2min).",
)
@handles_errors
def locks_cmd(tables: tuple[str, ...], as_json: bool, dsn_env: str | None, long_after: float) -> None:
    """Show who holds and who waits for locks now, and with TABLEs, whether a DDL may go.

    Views: the blocking tree (every waiting session under the one blocking it), long-running
    transactions, the locks held and queued on each TABLE, vacuums running on them, and replica
    lag. With TABLEs the preflight verdict follows: exit 0 for go, 3 for no-go, each reason
    naming the pid, application, state and age to act on. Read only: nothing is changed.

    A TABLE is read as SQL reads a name (orders, "Billing"."Invoice"), and when that names
    nothing, as a spec writes it: Billing.Invoice finds "Billing"."Invoice".
    """
    from zdm_runbook.inspect.preflight import snapshot  # noqa: PLC0415 - pandas loads only for commands that need it

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


def _ago(when: Any) -> str:
    """How long ago ``when`` was, as a DBA says it (a running backfill silent for long has died)."""
    return human_seconds((datetime.now(UTC) - when).total_seconds())


@click.group("backfill")
def backfill_group() -> None:
    """See and steer running backfills (through the ledger in the target database).

    A backfill checks its controls every half second: pause, resume, or fix its batch size
    and the pause between batches. What is committed stays; a stopped backfill resumes where
    it ended when its migrate phase runs again.
    """


_change_arg = click.argument("change")
_step_opt = click.option(
    "--step", metavar="KEY", help="Only this step of the change (default: all its backfills)."
)
_env_opt = click.option(
    "--dsn-env",
    metavar="VAR",
    help=DSN_ENV_HELP,
)


def _control(change: str, step: str | None, dsn_env: str | None, **values: Any) -> None:
    with connect(env=dsn_env, autocommit=True) as conn:
        if not ledger_ready(conn):
            raise ConfigError("no backfill has run in this database: it has no ledger (schema zdm)")
        reached = control_backfill(conn, change, step, **values)
    if not reached:
        raise ConfigError(f"no backfill of change {change}{f' step {step}' if step else ''} in the ledger")
    click.echo(f"{reached} backfill{'s' if reached != 1 else ''} of {change} updated")


@backfill_group.command("status")
@click.argument("change", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_env_opt
@handles_errors
def backfill_status(change: str | None, as_json: bool, dsn_env: str | None) -> None:
    """Progress of the backfills (of CHANGE, or all): rows, batches, status and controls."""
    with connect(env=dsn_env, autocommit=True) as conn:
        if not ledger_ready(conn):
            click.echo("no backfills recorded (this database has no ledger)")
            return
        frame = backfills(conn, change)
    if as_json:
        click.echo(json.dumps(frame.to_dict("records"), indent=2, default=str))
        return
    if frame.empty:
        click.echo("no backfills recorded")
    for r in frame.to_dict("records"):
        total = r["rows_estimate"] or 0
        share = f" ({100 * r['rows_scanned'] / total:.0f}%)" if total else ""
        controls = ", ".join(
            text
            for text, on in (
                ("PAUSED", r["paused"]),
                (f"batch size fixed at {r['batch_size']}", r["batch_size"]),
                (f"pause {r['pause_ms']} ms", r["pause_ms"] is not None),
            )
            if on
        )
        click.echo(
            f"{r['change_id']} {r['step_key']} on {r['table_name']}: {r['status']}, {r['rows_scanned']:,}"
            f"{f' / ~{total:,}' if total else ''} rows{share}, {r['rows_updated']:,} updated,"
            f" {r['batches']} batches{'; ' + controls if controls else ''}"
            + (f"; last batch {_ago(r['updated_at'])} ago" if r["status"] == "running" else "")
            + (f"; holding: {r['hold']}" if r["status"] == "running" and r["hold"] else "")
        )


@backfill_group.command("pause")
@_change_arg
@_step_opt
@_env_opt
@handles_errors
def backfill_pause(change: str, step: str | None, dsn_env: str | None) -> None:
    """Pause CHANGE's backfill after its current batch (it keeps its connection and waits)."""
    _control(change, step, dsn_env, paused=True)


@backfill_group.command("resume")
@_change_arg
@_step_opt
@_env_opt
@handles_errors
def backfill_resume(change: str, step: str | None, dsn_env: str | None) -> None:
    """Resume CHANGE's paused backfill."""
    _control(change, step, dsn_env, paused=False)


@backfill_group.command("set")
@_change_arg
@_step_opt
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Fix the rows per batch.")
@click.option(
    "--pause",
    "pause",
    callback=lambda c, p, v: None if v is None else duration_arg(c, p, v, True),
    help="Fix the pause between batches (e.g. 0, 50ms, 1s).",
)
@click.option("--auto", is_flag=True, help="Hand batch size and pause back to the engine.")
@_env_opt
@handles_errors
def backfill_set(
    change: str,
    step: str | None,
    batch_size: int | None,
    pause: float | None,
    auto: bool,
    dsn_env: str | None,
) -> None:
    """Fix the batch size or the pause between batches of a running backfill, or --auto."""
    if auto and (batch_size or pause is not None):
        raise click.UsageError("--auto hands both back to the engine: use it alone")
    if not auto and batch_size is None and pause is None:
        raise click.UsageError("give --batch-size, --pause or --auto")
    pause_ms = None if pause is None else round(pause * 1000)
    _control(change, step, dsn_env, batch_size=batch_size, pause_ms=pause_ms, clear=auto)


@click.command("signoff")
@click.argument("change")
@click.argument("phase", type=click.Choice(["expand", "migrate", "switch", "contract"]))
@click.option("--by", "by", required=True, help="Who approves (after reading the phase's archived run).")
@click.option("--ticket", help="A change ticket to record with the sign-off.")
@click.option("--notes", help="Free text to record with the sign-off.")
@click.option("--dsn-env", metavar="VAR", help=DSN_ENV_HELP)
@handles_errors
def signoff_cmd(
    change: str, phase: str, by: str, ticket: str | None, notes: str | None, dsn_env: str | None
) -> None:
    """Sign off PHASE of CHANGE: it opens the next phase's gate. Refused unless the phase is complete."""
    with connect(env=dsn_env, autocommit=True) as conn:
        if not ledger_ready(conn):
            raise ZdmError(
                f"change {change} is not in the ledger of this database: no phase of it has run here"
            )
        record = sign_off(conn, change, phase, by, ticket, notes)
    click.echo(f"{change} {phase} signed off by {record.by} at {record.at:%Y-%m-%d %H:%M:%S %Z}")


@click.command("status")
@click.argument("change", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--dsn-env", metavar="VAR", help=DSN_ENV_HELP)
@handles_errors
def status_cmd(change: str | None, as_json: bool, dsn_env: str | None) -> None:
    """Where each change stands (or CHANGE): phases done and signed off, the next gate, backfills."""
    report: list[dict[str, Any]] = []
    with connect(env=dsn_env, autocommit=True) as conn:
        if not ledger_ready(conn):
            raise ConfigError("no change has run in this database yet: it has no ledger (schema zdm)")
        rows = status.changes(conn, change)
        if change and not rows:
            raise ConfigError(f"change {change} is not in the ledger of this database")
        for change_id, description in rows:
            phases: list[dict[str, Any]] = []
            for phase in Phase:
                st = phase_state(conn, change_id, phase)
                gate = check_gate(conn, change_id, phase)
                signed = st.signoff
                phases.append(
                    {
                        "phase": phase.value,
                        "steps_done": st.done,
                        "steps": st.steps,
                        "complete": st.complete,
                        "failed_steps": list(st.failed_steps),
                        "signed_off_by": signed.by if signed else None,
                        "signed_off_at": signed.at.isoformat() if signed else None,
                        "gate": gate.to_dict(),
                    }
                )
            report.append(
                {
                    "change": change_id,
                    "description": description,
                    "phases": phases,
                    **_details(conn, change_id),
                }
            )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for item in report:
        click.echo(f"{item['change']}: {item['description']}".rstrip(": "))
        for ph in item["phases"]:
            progress = (
                "complete"
                if ph["complete"]
                else f"{ph['steps_done']}/{ph['steps']} steps"
                if ph["steps"]
                else "not run"
            )
            by = f", signed off by {ph['signed_off_by']}" if ph["signed_off_by"] else ""
            closed = (
                "" if ph["complete"] or ph["gate"]["ok"] else f", gate closed: {ph['gate']['reasons'][0]}"
            )
            failures = f", failed: {', '.join(ph['failed_steps'])}" if ph["failed_steps"] else ""
            click.echo(f"  {ph['phase']:<9}{progress}{by}{failures}{closed}")
            run = item["last_runs"].get(ph["phase"])
            if run:
                at = run["started_at"][:19].replace("T", " ")
                click.echo(
                    f"{'':11}last run {run['outcome']} at {at}: {run['notebook'] or '(not a notebook run)'}"
                )
        for fill in item["backfills"]:
            share = f" ({fill['rows_scanned'] / fill['rows_estimate']:.0%})" if fill["rows_estimate"] else ""
            # Rows added while it ran are scanned too: once done, the estimate says nothing more.
            progress = (
                f"{fill['rows_scanned']:,} rows scanned"
                if fill["status"] == "done"
                else f"{fill['rows_scanned']:,} of ~{fill['rows_estimate'] or 0:,} rows{share}"
            )
            paused = " PAUSED" if fill["paused"] else ""
            click.echo(f"  backfill {fill['step']}: {fill['status']}{paused}, {progress}")
        for fail in item["last_failures"]:
            code = f"SQLSTATE {fail['sqlstate']}, " if fail["sqlstate"] else ""
            at = fail["at"][:19].replace("T", " ")
            click.echo(f"  last failure of {fail['step']} ({fail['outcome']}, {code}{at}): {fail['message']}")


def _details(conn: Conn, change_id: str) -> dict[str, Any]:
    """Backfill progress, each phase's last run (and its notebook), steps whose last attempt failed."""
    found = status.change_details(conn, change_id)
    return {
        "backfills": [{**fill, "paused": bool(fill["paused"])} for fill in found["backfills"]],
        "last_runs": {
            run["phase"]: {
                "outcome": run["outcome"],
                "started_at": run["started_at"].isoformat(),
                "notebook": run["notebook"],
            }
            for run in found["last_runs"]
        },
        "last_failures": [
            {**fail, "at": fail["at"].isoformat(), "message": _one_line(redact(fail["message"] or ""), 160)}
            for fail in found["last_failures"]
        ],
    }

"""What the phase notebooks' cells call: one :class:`Runbook` per run of a phase.

Each cell is one method, in the order the templates run them: :func:`start` (parameters checked,
connected, change locked, run recorded), :meth:`Runbook.gate`, :meth:`Runbook.preflight`,
:meth:`Runbook.show_plan`, :meth:`Runbook.execute`, :meth:`Runbook.compat`,
:meth:`Runbook.summary` and :meth:`Runbook.sign_off`. A method that fails records the run as
``failed`` (or ``refused`` at a gate) before raising, so the ledger agrees with the archived
notebook. Everything shown goes through :func:`~zdm_runbook.core.connect.redact`.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any, TypeVar

import pandas as pd

from zdm_runbook.core.connect import redact, resolve_dsn
from zdm_runbook.core.display import display, show_html
from zdm_runbook.core.errors import ZdmError
from zdm_runbook.execute import backfill as engine
from zdm_runbook.execute import compat
from zdm_runbook.execute.attempts import StepFailed, StepResult
from zdm_runbook.execute.executor import Executor
from zdm_runbook.execute.progress import LogProgress, State, frame
from zdm_runbook.execute.session import PhaseSession
from zdm_runbook.inspect import usage
from zdm_runbook.inspect.preflight import PreflightRefused, Verdict, preflight
from zdm_runbook.ledger.gates import GateRefused, check_gate
from zdm_runbook.ledger.signoffs import SignOff, phase_state, sign_off
from zdm_runbook.lint.analysis import step_locks
from zdm_runbook.notebook.charts import backfill_figure, show
from zdm_runbook.notebook.parameters import RunParameters, declared, for_ledger, validate
from zdm_runbook.notebook.widgets import WidgetProgress
from zdm_runbook.plan.steps import Step
from zdm_runbook.spec.catalog import require_valid
from zdm_runbook.spec.compat import MUST_WORK
from zdm_runbook.spec.model import Phase

F = TypeVar("F", bound=Callable[..., Any])


def _records_failure(fn: F) -> F:
    """On an exception, record the run as refused (gates) or failed before re-raising."""

    @wraps(fn)
    def wrapper(self: Runbook, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (GateRefused, PreflightRefused) as exc:
            self.session.finish("refused", str(exc))
            raise
        except BaseException as exc:
            self.session.finish("failed" if isinstance(exc, Exception) else "interrupted", str(exc))
            raise

    return wrapper  # type: ignore[return-value]


def start(phase: str, namespace: Mapping[str, Any]) -> Runbook:
    """Check the notebook's parameters (read by name from ``namespace``), connect, lock the
    change against a concurrent run, record the run, and show where it runs."""
    params = validate(phase, {n: namespace[n] for n in declared(phase) if n in namespace})
    require_valid(resolve_dsn(env=params.values["dsn_env"]), params.plan.change)
    session = PhaseSession(
        params.plan,
        params.phase,
        env=params.values["dsn_env"],
        run_id=params.run_id,
        parameters=for_ledger(params.values),
    ).open()
    book = Runbook(params, session)
    book.header()
    return book


class Runbook:
    """One run of one phase, cell by cell."""

    def __init__(self, params: RunParameters, session: PhaseSession) -> None:
        self.params, self.session = params, session
        self.phase: Phase = params.phase
        self.plan = params.plan
        self.steps = self.plan.for_phase(self.phase)
        self.results: list[StepResult] = []
        self.fills: dict[str, State] = {}
        self.started = time.monotonic()
        self.signed: SignOff | None = None
        self.verdict: Verdict | None = None
        self.form: Any = None  # the sign-off form, when one is shown

    @property
    def change_id(self) -> str:
        return self.plan.change.id

    @property
    def headless(self) -> bool:
        return bool(self.params.values["headless"])

    def header(self) -> None:
        """Where this runs: server, database, run id, parameters, and the change's status."""
        conn = self.session.control
        row = conn.execute(
            "SELECT current_setting('server_version'), current_database(), current_user"
        ).fetchone()
        version, database, user = row if row else ("?", "?", "?")
        facts = {
            "change": f"{self.change_id}: {self.plan.change.description}".rstrip(": "),
            "phase": self.phase.value,
            "server": f"PostgreSQL {version}, database {database} as {user} ({self.session.where})",
            "run id": str(self.session.run_id),
            "mode": ("headless" if self.headless else "interactive")
            + (", dry run" if self.params.values["dry_run"] else ""),
        }
        show_html(_table_html(facts) + "<h4>parameters</h4>" + _table_html(for_ledger(self.params.values)))
        display(self.status())

    def status(self) -> pd.DataFrame:
        """The change's phases as the ledger sees them."""
        rows = []
        for ph in Phase:
            st = phase_state(self.session.control, self.change_id, ph)
            rows.append(
                {
                    "phase": ph.value,
                    "steps done": f"{st.done}/{st.steps}",
                    "complete": st.complete,
                    "failed steps": ", ".join(st.failed_steps),
                    "signed off by": st.signoff.by if st.signoff else "",
                    "signed off at": f"{st.signoff.at:%Y-%m-%d %H:%M %Z}" if st.signoff else "",
                }
            )
        return pd.DataFrame(rows).set_index("phase")

    @_records_failure
    def gate(self) -> None:
        """The phase's gate, from the ledger (and, for contract, pg_stat_statements); refuses loudly."""
        conn = self.session.control
        values = self.params.values
        gate = check_gate(
            conn,
            self.change_id,
            self.phase,
            deploy_cycle_s=self.params.deploy_cycle_s,
            deploy_cycle_override=values.get("deploy_cycle_override") or None,
        )
        if self.phase == Phase.CONTRACT:
            gate.reasons += self._usage(window=self.params.usage_window_s if gate.ok else 0.0)
            gate.ok = not gate.reasons
        print(gate, flush=True)
        if not gate.ok:
            raise GateRefused(gate)

    def _usage(self, window: float) -> list[str]:
        conn = self.session.control
        targets = usage.dropped(self.plan)
        if not targets:
            print("contract drops no column, index or table: no usage to check")
            return []
        if not usage.available(conn):
            print(
                "pg_stat_statements is not installed in this database (or not loaded by the server):"
                " no evidence of who still uses",
                ", ".join(map(str, targets)),
            )
            return []
        seen = usage.watch(conn, targets, window)
        print(f"pg_stat_statements, watched for {window:g} s: statements using", ", ".join(map(str, targets)))
        if seen.statements:
            display(pd.DataFrame(seen.statements).drop(columns=["queryid"]))
        else:
            print("  none recorded")
        return seen.reasons()

    @_records_failure
    def preflight(self) -> None:
        """The live lock report on the phase's tables; no-go stops here when ``require_go``."""
        tables = sorted({str(t) for st in self.steps for t in st.tables})
        verdict = self.verdict = preflight(self.session.control, tables)
        print(verdict, flush=True)
        for name, view in verdict.frames.items():
            if len(view):
                show_html(f"<h4>{html.escape(name)}</h4>")
                display(view)
        if not verdict.go and self.params.values["require_go"]:
            raise PreflightRefused(verdict)

    def show_plan(self) -> None:
        """Each step of the phase: what it does, its SQL, its transaction mode and what it locks."""
        if not self.steps:
            show_html(f"<p>{self.phase.value} has no schema steps for this change.</p>")
            return
        parts = []
        for n, step in enumerate(self.steps, 1):
            mode = "in one transaction" if step.transactional else "outside a transaction (autocommit)"
            parts.append(
                f"<h4>{n}. {html.escape(step.description)}</h4>"
                f"<p><code>{html.escape(step.key)}</code>, {mode}; {html.escape(step_locks(step))}</p>"
                f"<pre>{html.escape(redact(step.render()))}</pre>"
            )
        show_html("\n".join(parts))

    @_records_failure
    def execute(self) -> None:
        """Run the steps with guards; a backfill shows live progress, then its chart and verification."""
        if self.params.values["dry_run"]:
            print("dry run: nothing executed")
            self.session.finish("dry_run", "dry run")
            return
        session = self.session
        fill = self.params.backfill
        listener = WidgetProgress() if not self.headless else LogProgress(fill.log_every)

        current: list[str] = []

        def on_batch(state: State) -> None:
            self.fills[current[-1]] = state
            listener(state)

        fill_step = engine.runner(session.conninfo, self.change_id, fill, on_batch)

        def run_fill(step: Step) -> None:
            current.append(step.key)
            fill_step(step)

        executor = Executor(
            session.worker,
            session.control,
            self.plan,
            settings=self.params.guard,
            backfill=run_fill,
            on_event=lambda text: print(text, flush=True),
            run_id=session.run_id,
            after_step=self._after_step if self.params.values["compat_each_step"] else None,
        )
        try:
            self.results = executor.run_phase(self.phase)
        except StepFailed as exc:
            self.results = exc.results
            display(self.outcomes())
            raise
        finally:
            for key, state in self.fills.items():
                title = f"{self.change_id} {key}: {state.table}"
                show(backfill_figure(frame(state), title), alt=f"backfill chart of {title}")
        display(self.outcomes())

    def _after_step(self, step: Step) -> None:
        if self.plan.change.compat is not None:
            self._compat(f"after step {step.key}")

    def outcomes(self) -> pd.DataFrame:
        """One row per step: outcome, attempts, time waited for locks, last error."""
        rows = [
            {
                "step": r.key,
                "outcome": r.outcome,
                "attempts": len(r.attempts),
                "lock wait (s)": round(sum(a.lock_wait_s for a in r.attempts), 3),
                "seconds": round(sum(a.seconds for a in r.attempts), 3),
                "last error": redact(
                    f"{r.attempts[-1].sqlstate or ''} {r.attempts[-1].message or ''}".strip()
                )[:200]
                if r.attempts and r.outcome != "applied"
                else "",
            }
            for r in self.results
        ]
        return pd.DataFrame(
            rows, columns=["step", "outcome", "attempts", "lock wait (s)", "seconds", "last error"]
        )

    @_records_failure
    def compat(self) -> None:
        """The old and new app's statements against the schema as it is now (the spec's ``compat:``)."""
        if self.plan.change.compat is None:
            print("the spec has no compat section: no app statements to check")
            return
        self._compat(f"after {self.phase.value}", show_all=True)

    def _compat(self, when: str, show_all: bool = False) -> None:
        if self.plan.change.compat is None:
            return
        results = compat.check(self.session.control, self.plan.change.compat, self.phase)
        must = " and ".join(f"the {v} app" for v in MUST_WORK[self.phase])
        bad = sum(r.required and not r.ok for r in results)
        print(f"compatibility {when}: {len(results)} statements, {bad} failed; {must} must work", flush=True)
        if show_all or bad:
            display(compat.frame(results))
        compat.raise_failures(results, when)

    @_records_failure
    def summary(self) -> None:
        """Close the run as succeeded and say what comes next."""
        if self.params.values["dry_run"]:
            print("dry run: nothing was executed, nothing to sign off")
            return
        self.session.finish("succeeded")
        applied = sum(r.outcome == "applied" for r in self.results)
        skipped = sum(r.outcome == "skipped" for r in self.results)
        rows = sum(s.rows_updated for s in self.fills.values())
        took = time.monotonic() - self.started
        print(
            f"{self.phase.value} of {self.change_id} succeeded in {took:.1f} s: {applied} step(s) applied,"
            f" {skipped} already done" + (f", {rows:,} rows backfilled" if self.fills else "")
        )
        display(self.status())

    def sign_off(self) -> None:
        """Headless: sign off with ``signoff_by`` if given. Interactive: the same, or a form."""
        values = self.params.values
        if self.session.outcome != "succeeded":
            print("no sign-off: the phase did not complete in this run")
        elif values["signoff_by"]:
            self._record(values["signoff_by"], values["signoff_ticket"], values["signoff_notes"])
        elif self.headless:
            print(
                f"awaiting sign-off: read this archived run, then\n"
                f"  zdm signoff {self.change_id} {self.phase.value} --by NAME [--ticket T] [--notes TEXT]"
            )
        else:
            self._form()

    def _record(self, by: str, ticket: str, notes: str) -> SignOff:
        evidence = {"run_id": str(self.session.run_id), "steps": {r.key: r.outcome for r in self.results}}
        self.signed = sign_off(
            self.session.control, self.change_id, self.phase, by, ticket or None, notes or None, evidence
        )
        record = {
            "signed off": f"{self.change_id} {self.phase.value}",
            "by": self.signed.by,
            "ticket": self.signed.ticket or "",
            "notes": self.signed.notes or "",
            "at": f"{self.signed.at:%Y-%m-%d %H:%M:%S %Z}",
        }
        print(f"signed off by {self.signed.by} at {record['at']}", flush=True)
        show_html("<h4>sign-off</h4>" + _table_html(record))
        return self.signed

    def _form(self) -> None:
        import ipywidgets as widgets  # noqa: PLC0415 - only in JupyterLab

        name, ticket = widgets.Text(description="name"), widgets.Text(description="ticket")
        notes = widgets.Textarea(description="notes")
        button = widgets.Button(description="Approve and sign off", button_style="success")
        out = widgets.Output()

        def approve(_: Any) -> None:
            with out:
                try:
                    self._record(name.value, ticket.value, notes.value)
                    button.disabled = True
                except ZdmError as exc:
                    print(f"not signed off: {exc}")

        button.on_click(approve)
        self.form = widgets.VBox([name, ticket, notes, button, out])
        display(self.form)


def _table_html(facts: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left'>{html.escape(redact(str(v)))}</td></tr>"
        for k, v in facts.items()
    )
    return f"<table>{rows}</table>"

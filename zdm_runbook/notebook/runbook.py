"""What the phase notebooks' cells call: one :class:`Runbook` per run of a phase.

Each cell is one method, in the order the templates run them: :func:`start` (parameters checked,
connected, change locked, run recorded), :meth:`Runbook.gate`, :meth:`Runbook.preflight`,
:meth:`Runbook.show_plan`, :meth:`Runbook.execute`, :meth:`Runbook.compat`,
:meth:`Runbook.summary` and :meth:`Runbook.sign_off`. A method that fails records the run as
``failed`` (or ``refused`` at a gate, ``interrupted`` by Jupyter's Stop) before raising, so the
ledger agrees with the archived notebook; our errors show as one message, not a traceback
(:meth:`zdm_runbook.core.errors.ZdmError._render_traceback_`). The run's two connections close when
its last cell (the sign-off) has run, when a cell fails, and when the notebook is run again in the
same kernel. An interactive run records the notebook's path (the kernel knows it) and, at
sign-off, the SHA-256 of the file as saved. Everything shown goes through
:func:`~zdm_runbook.core.connect.redact`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from zdm_runbook import ledger
from zdm_runbook.core.connect import connect, resolve_dsn
from zdm_runbook.core.display import show_html
from zdm_runbook.core.errors import Interrupted
from zdm_runbook.execute import compat
from zdm_runbook.execute import fill_runner as engine
from zdm_runbook.execute.attempts import StepFailed, StepResult
from zdm_runbook.execute.executor import Executor
from zdm_runbook.execute.progress import State, frame
from zdm_runbook.execute.rehearsal import rehearse
from zdm_runbook.execute.session import PhaseSession
from zdm_runbook.inspect import usage
from zdm_runbook.inspect.left_behind import change_warnings
from zdm_runbook.inspect.preflight import PreflightRefused, Verdict, drops_report, preflight
from zdm_runbook.ledger.gates import GateRefused, check_gate
from zdm_runbook.ledger.signoffs import SignOff, phase_state, sign_off
from zdm_runbook.notebook.charts import backfill_figure, show
from zdm_runbook.notebook.notebook_file import notebook_path, saved_notebook
from zdm_runbook.notebook.parameters import RunParameters, declared, for_ledger, validate
from zdm_runbook.notebook.signoff_form import SignOffForm, form_note
from zdm_runbook.notebook.views import (
    backfilled,
    facts_html,
    frame_html,
    outcomes_frame,
    plan_html,
    show_section,
    usage_html,
)
from zdm_runbook.notebook.widgets import progress_view
from zdm_runbook.plan.steps import Step
from zdm_runbook.spec.catalog import require_valid
from zdm_runbook.spec.compat import MUST_WORK
from zdm_runbook.spec.model import Phase

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


RERUN = "a new run of this notebook started in the same kernel"
STOPPED = "interrupted — run again to resume"


def _records_failure(fn: F) -> F:
    """On an exception, record the run as refused (gates), interrupted (Jupyter's Stop, Ctrl-C) or
    failed, close its connections, and re-raise; an interrupt becomes :class:`Interrupted`."""

    @wraps(fn)
    def wrapper(self: Runbook, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (GateRefused, PreflightRefused) as exc:
            self.close("refused", str(exc))
            raise
        except Interrupted as exc:
            self.close("interrupted", str(exc))
            raise
        except KeyboardInterrupt:
            self.close("interrupted", STOPPED)
            raise Interrupted(f"{STOPPED}: steps already applied are skipped") from None
        except BaseException as exc:
            self.close("failed" if isinstance(exc, Exception) else "interrupted", str(exc))
            raise

    return wrapper  # type: ignore[return-value]


_current: list[Runbook] = []  # the run this kernel started last: closed when the notebook runs again


def start(phase: str, namespace: Mapping[str, Any]) -> Runbook:
    """Check the notebook's parameters (read by name from ``namespace``), connect, lock the
    change against a concurrent run, record the run, and show where it runs."""
    while _current:  # the notebook runs again in this kernel: the earlier run lets go first
        _current.pop().close("interrupted", RERUN)
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
    if not book.headless:
        book.notebook = notebook_path(namespace)
        if book.notebook is not None:
            ledger.attach_notebook(session.control, session.run_id, str(book.notebook))
    _current.append(book)
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
        self.started_at = time.time()
        self.signed: SignOff | None = None
        self.verdict: Verdict | None = None
        self.form: SignOffForm | None = None  # the sign-off form, when one is shown
        self.notebook: Path | None = None  # interactive: the notebook file, when the kernel knows it

    def close(self, outcome: str | None = None, message: str | None = None) -> None:
        """Record how the run ended (if it had not) and close its connections; idempotent."""
        if outcome is not None and self.session.outcome is None:
            try:
                self.session.finish(outcome, message)
            except Exception:  # the connection is gone: closing must still happen
                log.warning("could not record the run as %s", outcome, exc_info=True)
        self.session.close()

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
        if self.notebook is not None:
            facts["notebook"] = str(self.notebook)
        show_html(facts_html(facts) + "<h4>parameters</h4>" + facts_html(for_ledger(self.params.values)))
        show_html(frame_html(self.status().reset_index()))

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
            used = self._usage(window=self.params.usage_window_s if gate.ok else 0.0)
            gate.reasons += used
            gate.ok, gate.waiting = not gate.reasons, gate.waiting and not used
        if not gate.ok:  # shown once: by the error, as the cell's result
            raise GateRefused(gate)
        print(gate, flush=True)

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
        how = f"watched for {window:g} s" if window > 0 else "not watched: the gate is already closed"
        print(f"pg_stat_statements ({how}): the application's statements using", ", ".join(map(str, targets)))
        show_html(usage_html(seen))
        return seen.reasons()

    @_records_failure
    def preflight(self) -> None:
        """The live lock report on the phase's tables, and the phase rehearsed on a shadow copy with
        the spec's compat statements (:mod:`.rehearsal`); no-go stops here when ``require_go``."""
        tables = sorted({t for st in self.steps for t in st.tables}, key=str)  # Tables: names as written
        verdict = self.verdict = preflight(self.session.control, tables)
        applied = frozenset(ledger.applied_steps(self.session.control, self.change_id))
        todo = [st.render() for st in self.steps if st.key not in applied]
        drops, dropped = drops_report(self.session.control, todo)
        verdict.add(drops, "what the drops take along", dropped)
        pending = [s.backfill for s in self.plan.steps if s.backfill and s.key not in applied]
        ops = self.plan.change.operations
        dual = self.plan.change.dual_write
        for name, warnings, table in change_warnings(self.session.control, ops, self.phase, pending, dual):
            verdict.add(warnings, name, table)
        rehearsed = rehearse(self.session.control, self.steps, self.plan.change.compat, self.phase, applied)
        verdict.add(rehearsed.reasons, "rehearsal on a shadow copy", rehearsed.frame())
        refused = not verdict.go and self.params.values["require_go"]
        if not refused:  # a refusal is shown once: by the error, after the evidence
            print(verdict, flush=True)
        for name, view in verdict.frames.items():
            if len(view):
                show_section(name.replace("_", " "), view)
        if refused:
            raise PreflightRefused(verdict)

    def show_plan(self) -> None:
        """Each step of the phase: what it does, its SQL, its transaction mode and what it locks."""
        if not self.steps:
            show_html(f"<p>{self.phase.value} has no schema steps for this change.</p>")
            return
        show_html(plan_html(self.steps))

    @_records_failure
    def execute(self) -> None:
        """Run the steps with guards; a backfill shows live progress, then its chart and verification."""
        if self.params.values["dry_run"]:
            print("dry run: nothing executed")
            self.session.finish("dry_run", "dry run")
            return
        session = self.session
        fill = self.params.backfill

        def run_fill(steps: Sequence[Step]) -> None:  # a view per backfill step; its chart at the end
            views = {st.key: progress_view(not self.headless, st.key, fill.log_every) for st in steps}

            def on_batch(state: State) -> None:
                self.fills[state.step] = state
                views[state.step](state)

            try:
                engine.runner(session.conninfo, self.change_id, fill, on_batch)(steps)
            finally:
                for key, view in views.items():
                    view.close()
                    state = self.fills.get(key)
                    if state is not None and state.batches:
                        title = f"{state.title} ({self.change_id})"
                        show(backfill_figure(frame(state), title), alt=f"chart of the {title}")

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
            show_html(frame_html(self.outcomes()))
            raise
        except KeyboardInterrupt:
            raise Interrupted(self._stopped()) from None
        show_html(frame_html(self.outcomes()))

    def _stopped(self) -> str:
        """The one line an interrupted execute ends with: what stays, and that a re-run resumes."""
        parts = [
            f"{key} committed {s.rows_scanned:,}"
            + (f" of ~{s.rows_estimate:,}" if s.rows_estimate else "")
            + f" rows of {s.table}"
            for key, s in self.fills.items()
            if s.finished is None
        ]
        return f"{STOPPED}: " + ("; ".join(parts) or "steps already applied are skipped")

    def _after_step(self, step: Step) -> None:
        if self.plan.change.compat is not None:
            self._compat(f"after step {step.key}")

    def outcomes(self) -> pd.DataFrame:
        """One row per step: outcome, attempts, time waited for locks, last error."""
        return outcomes_frame(self.results)

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
            show_html(frame_html(compat.frame(results)))
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
        took = time.monotonic() - self.started
        print(
            f"{self.phase.value} of {self.change_id} succeeded in {took:.1f} s: {applied} step(s) applied,"
            f" {skipped} already done" + "".join(f"; {text}" for text in backfilled(self.fills.values()))
        )
        show_html(frame_html(self.status().reset_index()))

    def sign_off(self) -> None:
        """Headless: sign off with ``signoff_by`` if given. Interactive: a form (``signoff_by`` fills
        its name). Then the run's connections close: the form records through a connection of its own."""
        values = self.params.values
        try:
            if self.session.outcome != "succeeded":
                print("no sign-off: the phase did not complete in this run")
            elif self.headless and values["signoff_by"]:
                by, ticket, notes = values["signoff_by"], values["signoff_ticket"], values["signoff_notes"]
                self._show_record(self.record_sign_off(by, ticket, notes))
            elif self.headless:
                print(
                    f"awaiting sign-off: read this archived run, then\n"
                    f"  zdm signoff {self.change_id} {self.phase.value} --by NAME [--ticket T] [--notes TEXT]"
                )
            else:
                self.form = SignOffForm(
                    self.record_sign_off,
                    name=values["signoff_by"],
                    ticket=values["signoff_ticket"],
                    notes=values["signoff_notes"],
                    note=form_note(self.notebook),
                )
                self.form.show()
        finally:
            self.close()

    def record_sign_off(self, by: str, ticket: str, notes: str) -> SignOff:
        """Write the sign-off with its evidence (the run, its steps and, interactively, the saved
        notebook's path and SHA-256) through a connection of its own; :class:`ZdmError` when refused."""
        evidence: dict[str, Any] = {
            "run_id": str(self.session.run_id),
            "steps": {r.key: r.outcome for r in self.results},
        }
        digest = None
        if self.notebook is not None:
            digest, saved = saved_notebook(self.notebook, since=self.started_at)
            evidence["notebook"] = {"path": str(self.notebook), "sha256": digest, "saved_at": saved}
        with connect(self.session.conninfo, phase=f"{self.phase.value}:signoff", autocommit=True) as conn:
            self.signed = sign_off(
                conn, self.change_id, self.phase, by, ticket or None, notes or None, evidence
            )
            if self.notebook is not None:
                ledger.attach_notebook(conn, self.session.run_id, str(self.notebook), digest)
        return self.signed

    def _show_record(self, signed: SignOff) -> None:
        record = {
            "signed off": f"{self.change_id} {self.phase.value}",
            "by": signed.by,
            "ticket": signed.ticket or "",
            "notes": signed.notes or "",
            "at": f"{signed.at:%Y-%m-%d %H:%M:%S %Z}",
        }
        print(f"signed off by {signed.by} at {record['at']}", flush=True)
        show_html("<h4>sign-off</h4>" + facts_html(record))

"""The fleet's Airflow operators: one phase on one target, the wave's verdict, the wave's sign-off.

:class:`PhaseOperator` does what ``zdm run PHASE SPEC`` does on one target, with that target's
DSN in :data:`~zdm_runbook.fleet.targets.DSN_ENV` for the notebook's kernel only. Before it runs,
it reads the target's gate: open, it runs; closed only by time or a missing sign-off, it defers to
a :class:`~zdm_runbook.fleet.trigger.GateTrigger` (no worker slot held); closed for any other
reason (an earlier phase failed here), the task is skipped: the target has stopped.
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, cast

import psycopg
from airflow.sdk import BaseHook, BaseOperator, Context, TriggerRule
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.sdk.log import mask_secret

from zdm_runbook.core.connect import redact
from zdm_runbook.core.errors import ZdmError
from zdm_runbook.fleet.targets import (
    archive_of,
    conninfo_of,
    dsn_in_env,
    last_failure,
    read_gate,
    why_not_complete,
)
from zdm_runbook.fleet.trigger import GateTrigger, connection_fields
from zdm_runbook.fleet.waves import Next, WaveVerdict, next_step
from zdm_runbook.ledger.signoffs import sign_off
from zdm_runbook.notebook.runner import RunResult, check, run
from zdm_runbook.spec.model import Phase


def target_dsn(conn_id: str) -> str:
    """The DSN of an Airflow connection, read from Airflow's secret store inside the task; its
    password is registered with Airflow's log masker as well as with :func:`redact`."""
    conn = BaseHook.get_connection(conn_id)
    if conn.password:
        mask_secret(conn.password)
    return conninfo_of(conn_id, connection_fields(conn))


class _LogLines(io.TextIOBase):
    """The notebook's live output, line by line into the task log, with passwords masked."""

    def __init__(self, log: Any) -> None:
        self._log, self._part = log, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._part = (self._part + text).split("\n")
        for line in lines:
            self._log.info("%s", redact(line))
        return len(text)

    def flush(self) -> None:
        if self._part:
            self._log.info("%s", redact(self._part))
            self._part = ""


class PhaseOperator(BaseOperator):
    """One phase of one change on one target (mapped over the fleet's targets by ``target``).

    Its XCom is the run's summary: target, phase, outcome, exit status and the archived files;
    never the DSN. A failure that time may cure raises for Airflow's retries; one that it will not
    (bad input, duplicate values under a unique index) fails the task without retrying.
    """

    template_fields = ()  # nothing is rendered, so nothing of a target can reach the rendered fields
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        target: str,
        phase: str,
        spec: str,
        archive: str,
        parameters: dict[str, str] | None = None,
        gate_poll: timedelta = timedelta(minutes=1),
        gate_timeout: timedelta | None = timedelta(days=7),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.phase = Phase(phase).value
        self.spec = spec
        self.archive = archive
        self.parameters = dict(parameters or {})
        self.gate_poll = gate_poll
        self.gate_timeout = gate_timeout

    def execute(self, context: Context) -> dict[str, Any]:
        params = check(self.phase, Path(self.spec), self.parameters)
        change_id = params.plan.change.id
        override = params.values.get("deploy_cycle_override") or None
        dsn = self._dsn()
        try:
            gate = read_gate(
                dsn,
                change_id,
                self.phase,
                deploy_cycle_s=params.deploy_cycle_s,
                deploy_cycle_override=override,
            )
        except (psycopg.Error, ZdmError) as exc:
            why = redact(str(exc))
            raise AirflowException(f"{self.target}: its ledger could not be read: {why}") from None
        if gate.ok:
            return self._run(dsn)
        if gate.waiting:
            self.log.info("%s: %s\ndeferred (ledger read every %s)", self.target, gate, self.gate_poll)
            cycle, poll_s = params.deploy_cycle_s, self.gate_poll.total_seconds()
            self.defer(
                trigger=GateTrigger(self.target, change_id, self.phase, cycle, override, poll_s),
                method_name="resume",
                timeout=self.gate_timeout,
            )
        raise AirflowSkipException(f"{self.target} stopped before {self.phase}: {'; '.join(gate.reasons)}")

    def resume(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """The trigger fired: the gate opened (run the phase) or closed for good (the target stops)."""
        if not event.get("ok"):
            reasons = "; ".join(str(r) for r in event.get("reasons", []))
            raise AirflowSkipException(f"{self.target} stopped before {self.phase}: {reasons}")
        self.log.info("%s: gate to %s open", self.target, self.phase)
        return self._run(self._dsn())

    def _dsn(self) -> str:
        try:
            return target_dsn(self.target)
        except ZdmError as exc:
            raise AirflowFailException(str(exc)) from None

    def _run(self, dsn: str) -> dict[str, Any]:
        stream = _LogLines(self.log)
        with dsn_in_env(dsn) as env:
            try:
                result = run(
                    self.phase,
                    Path(self.spec),
                    {**self.parameters, "dsn_env": env},
                    archive_of(Path(self.archive), self.target),
                    stream=cast(IO[str], stream),
                    log_cells=False,  # papermill's logger is Airflow's task log too: once is enough
                )
            except ZdmError as exc:  # refused before the kernel started: bad input, an unreachable server
                code, sqlstate = exc.exit_code, getattr(exc, "sqlstate", None)
                self._raise(next_step(code, sqlstate), f"{self.target}: {self.phase}: {redact(str(exc))}")
            finally:
                stream.flush()
        self.log.info("%s", result)
        summary = _summary(self.target, result)
        if result.exit_code == 0:
            return summary
        sqlstate = _quietly(last_failure, dsn, result.run_id)
        why = (
            f"{self.target}: {self.phase} {result.outcome} (exit {result.exit_code}"
            + (f", SQLSTATE {sqlstate}" if sqlstate else "")
            + f"): {redact(result.message).strip()[:800]}\n  archive: {result.notebook}"
        )
        self._raise(next_step(result.exit_code, sqlstate), why)
        return summary  # pragma: no cover - _raise always raises

    def _raise(self, nxt: Next, why: str) -> None:
        if nxt == Next.RETRY:
            raise AirflowException(why + "\n  (time may cure this: Airflow's retries apply)")
        raise AirflowFailException(why + "\n  (running it again would not help: this target stops here)")


def _summary(target: str, result: RunResult) -> dict[str, Any]:
    return {
        "target": target,
        "phase": result.phase,
        "change": result.change_id,
        "run_id": result.run_id,
        "outcome": result.outcome,
        "exit_code": int(result.exit_code),
        "notebook": str(result.notebook) if result.notebook else None,
        "html": str(result.html) if result.html else None,
    }


def _quietly(read: Any, *args: Any) -> Any:
    try:
        return read(*args)
    except (psycopg.Error, ZdmError):
        return None


class WaveOperator(BaseOperator):
    """After a phase on every target: which completed it (from each target's ledger, the source of
    truth), which stopped, and whether the wave goes on (it fails above ``max_failed``)."""

    template_fields = ()
    ui_color = "#fef3c7"

    def __init__(
        self, *, phase: str, targets: list[str], change_id: str, max_failed: float, **kwargs: Any
    ) -> None:
        # Once every target is done, failed and skipped (stopped) ones included. (Airflow's
        # all_done_min_one_success would skip the wave when one target had stopped earlier.)
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.phase, self.targets, self.change_id, self.max_failed = phase, targets, change_id, max_failed

    def execute(self, context: Context) -> dict[str, Any]:
        complete: list[str] = []
        stopped: dict[str, str] = {}
        for target in self.targets:
            try:
                why = why_not_complete(target_dsn(target), self.change_id, self.phase)
            except (psycopg.Error, ZdmError, AirflowException) as exc:
                why = f"its ledger could not be read: {redact(str(exc))}"
            if why is None:
                complete.append(target)
            else:
                stopped[target] = why
        verdict = WaveVerdict(self.phase, tuple(complete), stopped, self.max_failed)
        self.log.info("%s", verdict)
        if not verdict.goes_on:
            raise AirflowFailException(str(verdict))
        return {
            "phase": self.phase,
            "complete": complete,
            "stopped": stopped,
            "summary": str(verdict),
            "markdown": verdict.markdown(),
        }


class SignoffOperator(BaseOperator):
    """Records the wave's Airflow approval as one sign-off per target that completed the phase, in
    that target's ledger: the approver's name, and the Airflow run as evidence."""

    template_fields = ()
    ui_color = "#dcfce7"

    def __init__(
        self, *, phase: str, targets: list[str], change_id: str, approval_task_id: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.phase, self.targets, self.change_id = phase, targets, change_id
        self.approval_task_id = approval_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        answer = context["ti"].xcom_pull(task_ids=self.approval_task_id) or {}
        user = answer.get("responded_by_user") or {}
        by = str(user.get("name") or user.get("id") or "").strip()
        if not by:
            raise AirflowFailException(f"the approval {self.approval_task_id} names no approver")
        evidence = {
            "airflow_dag_id": context["dag"].dag_id,
            "airflow_run_id": context["run_id"],
            "approval_task": self.approval_task_id,
            "approver_id": str(user.get("id") or ""),
            "responded_at": str(answer.get("responded_at") or ""),
        }
        signed: list[str] = []
        for target in self.targets:
            try:
                with psycopg.connect(target_dsn(target), autocommit=True) as conn:
                    sign_off(
                        conn,
                        self.change_id,
                        self.phase,
                        by,
                        notes=f"approved in Airflow for the fleet (run {context['run_id']})",
                        evidence=evidence,
                    )
            except (ZdmError, psycopg.Error) as exc:  # not complete there: that target has stopped
                self.log.info("%s: not signed off: %s", target, redact(str(exc)))
                continue
            signed.append(target)
            self.log.info("%s: %s signed off by %s", target, self.phase, by)
        return {"phase": self.phase, "by": by, "signed": signed}

"""Guarded execution of a plan's steps: fail fast on locks, retry with backoff, never freeze the app.

A step in a transaction runs as ``BEGIN; set_config(lock_timeout, statement_timeout, local);
statements; COMMIT``, so the settings die with the transaction, all sent in one pipeline so a lock
is held for the statements' time, not for their round trips.
A CONCURRENTLY statement runs alone in autocommit with the same settings set before and restored
after. An index build may start ``index_build_workers`` parallel workers (0: it runs in its own
backend alone, and leaves the app the other cores). ``lock_not_available`` (55P03) and
``deadlock_detected`` (40P01) are retried with full-jitter backoff; ``query_canceled`` (57014) and
anything else is reported, not retried. Each attempt is written to the ledger with who blocked it,
sampled from a second session while it waited.
Before each attempt, an anti-wraparound vacuum on the step's tables stops the step unsent, and a
regular autovacuum there is cancelled (:mod:`.vacuum_yield`): it would outlast every attempt.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from zdm_runbook import ledger
from zdm_runbook.core.connect import redact, set_timeouts
from zdm_runbook.core.errors import ConfigError, ZdmError
from zdm_runbook.execute.attempts import (
    RETRIED,
    Attempt,
    StepFailed,
    StepResult,
    exhausted_text,
    failure_text,
    outcome_of,
)
from zdm_runbook.execute.guard import GuardSettings
from zdm_runbook.execute.index_twins import pieces
from zdm_runbook.execute.vacuum_yield import wraparound_reason, yield_autovacuum
from zdm_runbook.execute.walk import walks
from zdm_runbook.inspect.blockers import BlockerWatch, describe, holders
from zdm_runbook.inspect.locks import autovacuum_rows
from zdm_runbook.plan import steps as s
from zdm_runbook.plan.planner import Plan
from zdm_runbook.plan.steps import Step
from zdm_runbook.spec.model import Phase
from zdm_runbook.spec.sqltext import regclass

log = logging.getLogger(__name__)
Conn = psycopg.Connection[Any]
BackfillRunner = Callable[[Sequence[Step]], None]  # backfill steps on one table, run in one pass


def guards_hold(conn: Conn, step: Step) -> bool:
    """Whether the step's catalog guards say it is done: a later phase moved past it
    (``superseded_when``), or ``done_when`` holds. Read on ``conn`` (the live database, or the
    rehearsal's shadow copy)."""
    for guard in (step.superseded_when, step.done_when):
        if guard is not None:
            row = conn.execute(guard).fetchone()
            if row and row[0]:
                return True
    return False


class Executor:
    """Runs steps on ``worker`` (autocommit), watching and recording from ``control`` (autocommit)."""

    def __init__(
        self,
        worker: Conn,
        control: Conn,
        plan: Plan,
        *,
        settings: GuardSettings | None = None,
        step_settings: Mapping[str, GuardSettings] | None = None,
        backfill: BackfillRunner | None = None,
        on_event: Callable[[str], None] | None = None,
        sample_every: float = 0.1,
        rng: random.Random | None = None,
        run_id: uuid.UUID | None = None,
        after_step: Callable[[Step], None] | None = None,
    ) -> None:
        for name, c in (("worker", worker), ("control", control)):
            if not c.autocommit:
                raise ConfigError(f"the {name} connection must be in autocommit mode")
        self.worker, self.control, self.plan = worker, control, plan
        self.settings = settings or GuardSettings()
        self.step_settings = dict(step_settings or {})
        self.backfill = backfill
        self.on_event = on_event
        self.sample_every = sample_every
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.run_id = run_id or uuid.uuid4()
        self.after_step = after_step  # e.g. the compatibility check after each applied step
        self.worker_pid = worker.info.backend_pid

    def event(self, text: str) -> None:
        text = redact(text)
        log.info("%s", text)
        if self.on_event:
            self.on_event(text)

    # --- a phase ---

    def run_phase(self, phase: Phase | str) -> list[StepResult]:
        """Run the phase's steps in order; stop at the first failure (raised as :class:`StepFailed`).

        Consecutive backfill steps run as few passes as they can (:func:`.walk.walks`): those on
        one table that can share an UPDATE run together, each still recorded as its own step."""
        steps = self.plan.for_phase(phase)
        if any(st.backfill for st in steps) and self.backfill is None:
            raise ConfigError(f"phase {Phase(phase).value} has backfill steps: pass a backfill runner")
        results: list[StepResult] = []
        for fills, run in itertools.groupby(steps, key=lambda st: st.backfill is not None):
            if fills:
                results += self._run_backfills(list(run))
                continue
            for step in run:
                try:
                    results.append(self.run_step(step))
                except StepFailed as exc:
                    exc.results = [*results, StepResult(step.key, "failed", exc.attempts)]
                    raise
                if self.after_step is not None and results[-1].outcome == "applied":
                    self.after_step(step)
        return results

    def _run_backfills(self, run: list[Step]) -> list[StepResult]:
        """Consecutive backfill steps: the ones done are skipped, the rest run in shared passes."""
        results = {st.key: self._skip(st) for st in run if self.is_done(st)}
        todo = [st for st in run if st.key not in results]
        for group in walks([st.backfill for st in todo if st.backfill is not None]):
            steps = [todo[i] for i in group]
            for result in self._run_backfill(steps):
                results[result.key] = result
            if self.after_step is not None:
                for st in steps:
                    self.after_step(st)
        return [results[st.key] for st in run]

    def _settings(self, step: Step) -> tuple[GuardSettings, dict[str, float]]:
        """The step's guard settings and the session settings they give a step of its kind: the
        timeouts, and for an index build the parallel workers it may start."""
        settings = self.step_settings.get(step.key, self.settings)
        timeouts = settings.timeouts_for(step.transactional, step.long_running)
        if step.builds_index:
            timeouts["max_parallel_maintenance_workers"] = settings.index_build_workers
        return settings, timeouts

    def _skip(self, step: Step) -> StepResult:
        self._record(step, 0, self._settings(step)[1], Attempt(0, "skipped", 0.0, message="already applied"))
        self.event(f"{step.key}: already applied, skipped")
        return StepResult(step.key, "skipped", [])

    # --- one step ---

    def is_done(self, step: Step) -> bool:
        """The step's catalog guard; a step without one (raw SQL) is done when the ledger says so.

        A step a later phase has moved past (its ``superseded_when`` holds) counts as done: re-running
        expand after contract must never bring back a trigger on a dropped column.
        """
        if step.done_when is not None or step.superseded_when is not None:
            if guards_hold(self.control, step):
                return True
            if step.done_when is not None:
                return False
        return step.key in ledger.applied_steps(self.control, self.plan.change.id)

    def run_step(self, step: Step) -> StepResult:
        """Apply one step unless already applied; retry lock timeouts and deadlocks with backoff."""
        if self.is_done(step):
            return self._skip(step)
        settings, timeouts = self._settings(step)
        if step.backfill is not None and self.backfill is not None:
            return self._run_backfill([step])[0]
        if (parts := pieces(self.control, step)) is not None:
            return self._run_pieces(step, parts, timeouts)
        attempts: list[Attempt] = []
        catalog_only = step.transactional and not step.long_running
        for number in range(1, settings.max_attempts + 1):
            # The autovacuums on the step's tables, looked at before every attempt: one may start
            # between two. An anti-wraparound one stops the step unsent; a regular one is cancelled.
            vacuums = autovacuum_rows(self.control, step.tables) if step.tables else []
            if (why := wraparound_reason(vacuums)) is not None:
                attempts.append(Attempt(number, "no-go", 0.0, message=why))
                self._record(step, number, timeouts, attempts[-1])
                raise StepFailed(step.key, failure_text(step, attempts[-1], number), None, attempts)
            notes = yield_autovacuum(self.control, step, vacuums) if settings.cancel_autovacuum else []
            for note in notes:
                self.event(f"{step.key}: {note}")
            timeouts_now = settings.attempt_timeouts(timeouts, number, catalog_only)
            attempt = self._attempt(step, number, timeouts_now, notes)
            attempts.append(attempt)
            if attempt.outcome == "applied":
                self.event(f"{step.key}: applied (attempt {number}, {attempt.seconds:.2f} s)")
                return StepResult(step.key, "applied", attempts)
            if attempt.outcome not in RETRIED:
                raise StepFailed(step.key, failure_text(step, attempt, number), attempt.sqlstate, attempts)
            if number < settings.max_attempts:
                pause = settings.backoff(number, self.rng)
                who = "; ".join(describe(b) for b in attempt.blockers) or "no blocker seen"
                self.event(
                    f"{step.key}: attempt {number}/{settings.max_attempts} hit {attempt.outcome}"
                    f" after {attempt.seconds:.2f} s (blocked by {who}); retrying in {pause:.2f} s"
                )
                time.sleep(pause)
        last = attempts[-1]
        raise StepFailed(step.key, exhausted_text(step, attempts), last.sqlstate, attempts)

    def _run_pieces(self, step: Step, parts: list[Step], timeouts: dict[str, float]) -> StepResult:
        """The step in pieces read from the catalog when it runs: an index on a partitioned table
        (:mod:`.partitions`), or the twins of the indexes on a key (:mod:`.index_twins`)."""
        started = time.monotonic()
        done = [self.run_step(part) for part in parts]
        if not self.is_done(step):
            why = f"step {step.key}: every piece applied, yet its check does not hold"
            raise StepFailed(step.key, why, None, [])
        built = sum(r.outcome == "applied" for r in done)
        attempt = Attempt(
            1, "applied", time.monotonic() - started, message=f"{built} of {len(parts)} pieces applied"
        )
        self._record(step, 1, timeouts, attempt)
        self.event(
            f"{step.key}: applied in {len(parts)} piece{'s' * (len(parts) != 1)} ({attempt.seconds:.1f} s)"
        )
        return StepResult(step.key, "applied", [attempt])

    def _run_backfill(self, steps: list[Step]) -> list[StepResult]:
        """Backfill steps sharing one pass: one attempt each, all ending the way the pass ends."""
        if self.backfill is None:  # pragma: no cover - run_phase checks first
            raise ConfigError("no backfill runner")
        started = time.monotonic()
        attempt_ids = [self._start(st, 1, self._settings(st)[1]) for st in steps]

        def finish(outcome: str, message: str | None = None) -> Attempt:
            attempt = Attempt(1, outcome, time.monotonic() - started, message=message)
            for attempt_id in attempt_ids:
                self._finish(attempt_id, attempt)
            return attempt

        try:
            self.backfill(steps)
        except Exception as exc:
            finish("failed", str(exc))
            raise
        except BaseException as exc:  # Jupyter's Stop, Ctrl-C: the committed batches stay
            finish(
                "interrupted",
                f"interrupted by {type(exc).__name__}: what is committed stays; run again to resume",
            )
            raise
        attempt = finish(
            "applied", f"in one pass with {', '.join(st.key for st in steps)}" if len(steps) > 1 else None
        )
        for st in steps:
            self.event(f"{st.key}: applied (backfilled and verified, {attempt.seconds:.1f} s)")
        return [StepResult(st.key, "applied", [attempt]) for st in steps]

    def _attempt(
        self, step: Step, number: int, timeouts: dict[str, float], before: Sequence[str] = ()
    ) -> Attempt:
        attempt_id = self._start(step, number, timeouts)
        started = time.monotonic()
        watch = BlockerWatch(self.control, self.worker_pid, self.sample_every)
        notes: list[str] = list(before)  # what was done for it (an autovacuum cancelled), recorded
        try:
            with watch:
                if step.builds_index:
                    notes += self._drop_invalid_index(*step.builds_index, timeouts)
                self._execute(step, timeouts)
                if step.builds_index:
                    self._check_index_valid(*step.builds_index)
        except psycopg.Error as exc:
            state = exc.sqlstate
            outcome = outcome_of(exc)
            if outcome == "lock_timeout":
                watch.close_wait(timeouts["lock_timeout"])
            blockers = watch.blockers or (
                holders(self.control, step.tables, self.worker_pid) if outcome == "lock_timeout" else []
            )
            message = "; ".join([*notes, redact(str(exc)).strip()])
            attempt = Attempt(
                number, outcome, time.monotonic() - started, state, message, watch.lock_wait_s, blockers
            )
        except ZdmError as exc:
            attempt = Attempt(number, "failed", time.monotonic() - started, None, str(exc), watch.lock_wait_s)
        except BaseException as exc:  # KeyboardInterrupt, a killed kernel: recorded, then re-raised
            elapsed = time.monotonic() - started
            why = f"interrupted by {type(exc).__name__}"
            self._finish(
                attempt_id,
                Attempt(number, "interrupted", elapsed, None, why, watch.lock_wait_s, watch.blockers),
            )
            raise
        else:
            done = "; ".join(notes) or None
            elapsed = time.monotonic() - started
            attempt = Attempt(number, "applied", elapsed, None, done, watch.lock_wait_s, watch.blockers)
        self._finish(attempt_id, attempt)
        return attempt

    def _execute(self, step: Step, timeouts: dict[str, float]) -> None:
        if step.transactional:
            self._run_pipelined(step.statements, timeouts)
        else:
            self._run_alone(step.statements[0], timeouts)

    def _run_pipelined(self, statements: Sequence[s.Statement], timeouts: dict[str, float]) -> None:
        """``BEGIN``, the settings, the statements and ``COMMIT`` sent together (pipeline mode),
        their results read at the end: the lock the first statement takes is held for the
        statements' own time, not for a round trip per statement and one more for the COMMIT.
        Every app query on the table queues behind that lock for as long as it is held.

        On an error the server skips the rest up to the pipeline's sync, COMMIT included, and
        the transaction is rolled back here: nothing of the step is applied."""
        conn = self.worker
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                set_timeouts(conn, *_timeouts(timeouts), local=True, workers=_workers(timeouts))
                for statement in statements:
                    conn.execute(statement)
                conn.execute("COMMIT")
        except BaseException:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                try:
                    conn.rollback()
                except psycopg.Error as exc:  # the connection is gone: so is its transaction
                    log.warning("rollback after a failed step did not complete: %s", redact(str(exc)))
            raise

    def _run_alone(self, statement: s.Statement, timeouts: dict[str, float]) -> None:
        """A statement that cannot run in a transaction block: autocommit, settings set and restored."""
        if self.worker.info.transaction_status != TransactionStatus.IDLE:
            raise ZdmError("refusing to send a CONCURRENTLY statement: the session is inside a transaction")
        row = self.worker.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),"
            " current_setting('max_parallel_maintenance_workers')"
        ).fetchone()
        set_timeouts(self.worker, *_timeouts(timeouts), local=False, workers=_workers(timeouts))
        try:
            self.worker.execute(statement)
        finally:
            if row and not self.worker.closed:
                was = str(row[2]) if _workers(timeouts) is not None else None
                set_timeouts(self.worker, str(row[0]), str(row[1]), local=False, workers=was)

    def _drop_invalid_index(self, schema: str, name: str, timeouts: dict[str, float]) -> list[str]:
        """Drop an INVALID index ``name`` left by an earlier failed build, unless a build is running."""
        row = self.control.execute(
            sql.SQL(
                "SELECT i.indisvalid, (SELECT string_agg(p.pid::text, ', ')"
                " FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)"
                " FROM pg_index i WHERE i.indexrelid = {}"
            ).format(regclass(schema, name))
        ).fetchone()
        if row is None or row[0]:
            return []
        if row[1]:
            raise ZdmError(
                f"index {schema}.{name} is being built right now by pid {row[1]}: not dropping it;"
                " wait for that build to finish"
            )
        self.event(f"dropping INVALID index {schema}.{name} left by an earlier failed build")
        self._run_alone(s.drop_index_concurrently(schema, name), timeouts)
        return [f"dropped INVALID index {schema}.{name} left by an earlier failed build"]

    def _check_index_valid(self, schema: str, name: str) -> None:
        row = self.control.execute(s.index_valid(schema, name)).fetchone()
        if not (row and row[0]):
            raise ZdmError(
                f"index {schema}.{name} is INVALID after its build; it will be dropped and rebuilt on"
                " the next run"
            )

    # --- ledger and messages ---

    def _start(self, step: Step, number: int, timeouts: Mapping[str, float]) -> int:
        return ledger.start_attempt(
            self.control,
            self.run_id,
            self.plan.change.id,
            step.phase.value,
            step.key,
            number,
            timeouts,
            self.worker_pid,
        )

    def _finish(self, attempt_id: int, attempt: Attempt) -> None:
        ledger.finish_attempt(
            self.control,
            attempt_id,
            attempt.outcome,
            sqlstate=attempt.sqlstate,
            message=attempt.message,
            lock_wait_s=round(attempt.lock_wait_s, 3),
            blockers=attempt.blockers,
        )

    def _record(self, step: Step, number: int, timeouts: Mapping[str, float], attempt: Attempt) -> None:
        self._finish(self._start(step, number, timeouts), attempt)


def _timeouts(settings: Mapping[str, float]) -> tuple[float, float]:
    return settings["lock_timeout"], settings["statement_timeout"]


def _workers(settings: Mapping[str, float]) -> float | None:
    return settings.get("max_parallel_maintenance_workers")

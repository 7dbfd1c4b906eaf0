"""One try of a step and how it ended: the outcome the ledger records for psycopg's exception
classes, which outcomes are retried, and the words a failed step is reported in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from zdm_runbook.core.errors import DatabaseError
from zdm_runbook.inspect.blockers import describe
from zdm_runbook.plan.steps import Step

# psycopg's class for each SQLSTATE that ends an attempt, and the outcome the ledger records.
OUTCOME_OF: tuple[tuple[type[psycopg.Error], str], ...] = (
    (psycopg.errors.LockNotAvailable, "lock_timeout"),  # 55P03
    (psycopg.errors.DeadlockDetected, "deadlock"),  # 40P01
    (psycopg.errors.QueryCanceled, "query_canceled"),  # 57014: statement_timeout
)
RETRIED = frozenset({"lock_timeout", "deadlock"})


def outcome_of(exc: psycopg.Error) -> str:
    """The ledger's outcome for an attempt that raised ``exc``."""
    return next((outcome for cls, outcome in OUTCOME_OF if isinstance(exc, cls)), "failed")


@dataclass
class Attempt:
    """One try of a step, as recorded in the ledger."""

    number: int
    outcome: str
    seconds: float
    sqlstate: str | None = None
    message: str | None = None
    lock_wait_s: float = 0.0
    blockers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StepResult:
    """What happened to one step: ``applied``, ``skipped`` (already done) or ``failed``."""

    key: str
    outcome: str
    attempts: list[Attempt] = field(default_factory=list)


class StepFailed(DatabaseError):
    """A step was not applied; the message names the step, the SQLSTATE, the blockers and what next."""

    def __init__(self, key: str, message: str, sqlstate: str | None, attempts: list[Attempt]) -> None:
        super().__init__(message, sqlstate)
        self.key = key
        self.attempts = attempts
        self.results: list[StepResult] = []


def failure_text(step: Step, attempt: Attempt, number: int) -> str:
    what = {
        "query_canceled": "was cancelled (statement_timeout reached, or cancelled by an operator);"
        " it is not retried blindly: raise statement_timeout for this step or run it off-peak",
        "failed": "failed",
        "no-go": "was not sent",
    }.get(attempt.outcome, attempt.outcome)
    undone = (
        "its transaction was rolled back, nothing of it is applied"
        if step.transactional
        else "it ran outside a transaction; an INVALID index it left is rebuilt on the next run"
    )
    return (
        f"step {step.key} ({step.description}) {what} on attempt {number}: {attempt.message}."
        f" Not applied: {undone}"
    )


def exhausted_text(step: Step, attempts: list[Attempt]) -> str:
    last = attempts[-1]
    blockers = (
        "\n".join(f"  - {describe(b)}" for b in last.blockers)
        or "  - none seen (the wait was too short to sample)"
    )
    return (
        f"step {step.key} ({step.description}) not applied: {len(attempts)} attempts, each ended by"
        f" {last.outcome}. Blocked by:\n{blockers}\n"
        "Nothing of the step is applied. Wait for those sessions to finish (or end them), then re-run"
        " the phase; finished steps are skipped."
    )

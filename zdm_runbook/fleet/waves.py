"""What a target's phase run means for the wave: move on, try again, or stop; and when the wave stops.

``zdm run``'s exit status decides first: 0 the target moves on; 2 (bad input) stops it, since
running again changes nothing; 3 (a no-go preflight, a usage check) and 1 (a failed step) are tried
again while the failure is one that time cures (a lock held, a statement cancelled, a deadlock, a
lost connection: PostgreSQL's SQLSTATE says which), and stop the target otherwise (duplicate
values under a unique index do not go away by waiting). No Airflow here: the rules are plain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from zdm_runbook.core.errors import ExitCode

# SQLSTATEs that waiting can cure, by class ("08") or in full ("55P03").
TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57"})  # connection, rollback, resources, operator
TRANSIENT_STATES = frozenset({"55P03", "55006"})  # lock_not_available, object_in_use
DEFAULT_MAX_FAILED = 0.1


class Next(StrEnum):
    """What the scheduler does with a target after one run of a phase."""

    ON = "on"  # succeeded: the target moves on
    RETRY = "retry"  # failed in a way time cures: the task's retries apply
    STOP = "stop"  # failed for good: the target's later phases do not run


def transient(sqlstate: str | None) -> bool:
    """Whether a failure with this SQLSTATE may succeed when tried again later."""
    return bool(sqlstate) and (sqlstate in TRANSIENT_STATES or str(sqlstate)[:2] in TRANSIENT_CLASSES)


def next_step(exit_code: int, sqlstate: str | None) -> Next:
    """The wave's reading of one ``zdm run`` outcome (``sqlstate``: the run's last failed attempt)."""
    if exit_code == ExitCode.OK:
        return Next.ON
    if exit_code == ExitCode.BAD_INPUT:
        return Next.STOP
    if exit_code == ExitCode.REFUSED or sqlstate is None or transient(sqlstate):
        # A refusal (preflight no-go, apps still using what contract drops) and a failure with no
        # statement behind it (the kernel died, the server went away) may pass next time.
        return Next.RETRY
    return Next.STOP


def check_fraction(value: float, field: str = "max_failed_fraction") -> float:
    """``value`` if it is a fraction in [0, 1); else ValueError naming ``field``."""
    if not isinstance(value, int | float) or math.isnan(value) or not 0 <= value < 1:
        raise ValueError(f"{field} must be a fraction from 0 up to (not including) 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class WaveVerdict:
    """A phase across the fleet: which targets completed it, which stopped, and whether the wave
    goes on (it stops when the stopped share exceeds ``max_failed``)."""

    phase: str
    complete: tuple[str, ...]
    stopped: Mapping[str, str]  # target -> why, in one line
    max_failed: float

    @property
    def failed_fraction(self) -> float:
        total = len(self.complete) + len(self.stopped)
        return len(self.stopped) / total if total else 0.0

    @property
    def goes_on(self) -> bool:
        return bool(self.complete) and self.failed_fraction <= self.max_failed

    def __str__(self) -> str:
        total = len(self.complete) + len(self.stopped)
        head = (
            f"{self.phase}: {len(self.complete)} of {total} targets complete,"
            f" {len(self.stopped)} stopped ({self.failed_fraction:.0%}; the wave stops above"
            f" {self.max_failed:.0%})"
        )
        lines = [head, *(f"  {t}: complete" for t in self.complete)]
        lines += [f"  {t}: stopped: {why}" for t, why in self.stopped.items()]
        lines.append("the wave goes on" if self.goes_on else "THE WAVE STOPS: no later phase runs anywhere")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The verdict as Markdown, for the approval form an Airflow user reads."""
        total = len(self.complete) + len(self.stopped)
        lines = [f"**{self.phase}**: {len(self.complete)} of {total} targets complete", ""]
        lines += [f"- `{t}`: complete" for t in self.complete]
        lines += [f"- `{t}`: **stopped**: {why}" for t, why in self.stopped.items()]
        return "\n".join(lines)

"""The one exception hierarchy of zdm-runbook, rooted at :class:`ZdmError`.

Spec errors carry every problem with its field path; database errors keep the SQLSTATE of the
psycopg error they wrap (always chained with ``from``), so callers branch on classes, not text.
Every class carries the exit status a command ends with when it is raised (:class:`ExitCode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """What ``zdm`` exits with: the same meanings for every command, ``zdm run`` and a notebook."""

    OK = 0
    FAILED = 1  # something ran and failed (the message names the step and what to do)
    BAD_INPUT = 2  # the spec, a parameter, an argument or a setting is unusable: nothing ran
    REFUSED = 3  # a gate or a no-go preflight refused the phase: nothing ran


_BY_NAME: dict[str, type[ZdmError]] = {}


class ZdmError(Exception):
    """Root of every error zdm-runbook raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED

    def _render_traceback_(self) -> list[str]:
        """What IPython shows in a notebook instead of a traceback: the class and the message.

        Our errors are raised on purpose and their message says what to do; the frames through
        the runbook say nothing more to a DBA. The cell still fails (Run All stops there, papermill
        still sees the class name), and the message is shown once."""
        return [f"\x1b[1;31m{type(self).__name__}\x1b[0m: {self}"]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _BY_NAME.setdefault(cls.__name__, cls)


_BY_NAME["ZdmError"] = ZdmError


def exit_code_of(class_name: str) -> ExitCode:
    """The exit status for an error known only by its class name: one a notebook's kernel raised,
    which reaches the runner as papermill's ``ename``. Unknown names (not ours) mean FAILED."""
    cls = _BY_NAME.get(class_name)
    return cls.exit_code if cls is not None else ExitCode.FAILED


class Interrupted(ZdmError):
    """The operator stopped the run (Jupyter's Stop, Ctrl-C); what was committed stays."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[1;33m{self}\x1b[0m"]


class Refused(ZdmError):
    """A phase may not run now (a closed gate, a no-go preflight); nothing ran."""

    exit_code = ExitCode.REFUSED


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, at a dotted field path such as ``operations[2].add_column``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ZdmError):
    """A change spec (or a parameter) is unusable; lists every problem found, not just the first."""

    kind = "the spec"
    exit_code = ExitCode.BAD_INPUT

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        count = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{head}{count} problem{'s' if count != 1 else ''} in {self.kind}:\n{lines}")


class ParameterError(SpecError):
    """Run parameters (timeouts, retries, per-step overrides, ...) are unusable; lists every problem."""

    kind = "the parameters"


class ConfigError(ZdmError):
    """A setting outside the spec is unusable (an unset DSN variable, a missing binary, ...)."""

    exit_code = ExitCode.BAD_INPUT


class DatabaseError(ZdmError):
    """A statement failed on the server; ``sqlstate`` is PostgreSQL's five-character error code."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        suffix = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
        super().__init__(f"{message}{suffix}")


class EmbeddedServerError(ZdmError):
    """The local PostgreSQL server could not be initialised, started or stopped."""

"""The one exception hierarchy of zdm-runbook, rooted at :class:`ZdmError`.

Spec errors carry every problem with its field path; database errors keep the SQLSTATE of the
psycopg error they wrap (always chained with ``from``), so callers branch on classes, not text.
"""

from __future__ import annotations

from dataclasses import dataclass


class ZdmError(Exception):
    """Root of every error zdm-runbook raises on purpose."""


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


class DatabaseError(ZdmError):
    """A statement failed on the server; ``sqlstate`` is PostgreSQL's five-character error code."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        suffix = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
        super().__init__(f"{message}{suffix}")


class EmbeddedServerError(ZdmError):
    """The local PostgreSQL server could not be initialised, started or stopped."""

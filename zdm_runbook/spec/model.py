"""The model's leaf types: the four phases and a schema-qualified table name.

Everything in zdm-runbook names phases and tables; this module imports nothing of the package, so
any layer may use it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """The four phases of expand and contract, in the order they run."""

    EXPAND = "expand"
    MIGRATE = "migrate"
    SWITCH = "switch"
    CONTRACT = "contract"

    @property
    def order(self) -> int:
        """0 for expand ... 3 for contract."""
        return list(Phase).index(self)


@dataclass(frozen=True, order=True)
class Table:
    """A schema-qualified table name; ``schema`` defaults to ``public``."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

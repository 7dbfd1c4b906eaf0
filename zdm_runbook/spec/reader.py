"""Reading one mapping of a spec: typed fields, every problem recorded with its path, none raised.

:class:`Reader` is what every part of the spec (the change, each operation, the compat section)
is read with; it imports only :mod:`.model`, :mod:`.sqltext` and the core errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from zdm_runbook.core.errors import Problem
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import Expr, SqlTextError, SqlType, parse_expression, parse_type

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
MAX_IDENTIFIER_BYTES = 63
MAX_SQL_CHARS = 10_000
MAX_TEXT_CHARS = 4_000
T = TypeVar("T")


def identifier_problem(value: object) -> str | None:
    """Why ``value`` cannot be an identifier (None if it can). Identifiers are used case-exact."""
    if not isinstance(value, str):
        return f"expected an identifier, got {_kind(value)}"
    if not IDENTIFIER.match(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        return f"{shown!r} is not a valid identifier (letters, digits, _ and $, not starting with a digit)"
    if len(value.encode()) > MAX_IDENTIFIER_BYTES:
        return f"{value[:20]!r}... is {len(value.encode())} bytes; PostgreSQL truncates names at 63"
    return None


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    return {
        dict: "a mapping",
        list: "a list",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), f"a {type(value).__name__}")


class Reader:
    """Reads one mapping of a spec at ``path``, recording problems instead of raising."""

    def __init__(self, data: object, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        self.ok = isinstance(data, Mapping)
        self.data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        self.seen: set[str] = set()
        if not self.ok:
            self.problems.append(Problem(path, f"expected a mapping, got {_kind(data)}"))

    def at(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.at(key), message))

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, required: bool) -> Any:
        """The value at ``key`` as loaded (None if absent), marking the key as read."""
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required and self.ok:
                self.problem(key, "is required")
            return None
        return self.data[key]

    def _convert(self, key: str, value: Any, convert: Callable[[Any], T]) -> T | None:
        try:
            return convert(value)
        except (SqlTextError, ValueError) as exc:
            self.problem(key, str(exc))
            return None

    def ident(self, key: str, required: bool = True) -> str | None:
        value = self.raw(key, required)
        if value is None:
            return None
        why = identifier_problem(value)
        if why:
            self.problem(key, why)
            return None
        return str(value)

    def idents(self, key: str, required: bool = True) -> tuple[str, ...] | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.problem(key, f"expected a non-empty list of column names, got {_kind(value)}")
            return None
        names: list[str] = []
        for i, item in enumerate(value):
            why = identifier_problem(item)
            if why:
                self.problems.append(Problem(f"{self.at(key)}[{i}]", why))
            else:
                names.append(item)
        if len(set(names)) != len(names):
            self.problem(key, "names a column twice")
        return tuple(names) if len(names) == len(value) else None

    def table(self, key: str = "table", required: bool = True) -> Table | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(key, f"expected a table name, got {_kind(value)}")
            return None
        parts = value.split(".")
        if len(parts) > 2:
            self.problem(key, f"{value[:80]!r} is not 'table' or 'schema.table'")
            return None
        for part in parts:
            why = identifier_problem(part)
            if why:
                self.problem(key, why)
                return None
        return Table(parts[0], parts[1]) if len(parts) == 2 else Table("public", parts[0])

    def sqltype(self, key: str = "type", required: bool = True) -> SqlType | None:
        value = self._text_value(key, required, MAX_IDENTIFIER_BYTES * 4)
        return None if value is None else self._convert(key, value, parse_type)

    def expr(self, key: str, required: bool = True, what: str = "expression") -> Expr | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if isinstance(value, bool | int | float):
            value = str(value).lower() if isinstance(value, bool) else str(value)
        if not isinstance(value, str):
            self.problem(key, f"expected an SQL {what} as text, got {_kind(value)}")
            return None
        if len(value) > MAX_SQL_CHARS:
            self.problem(key, f"is {len(value)} characters; at most {MAX_SQL_CHARS}")
            return None
        return self._convert(key, value, lambda v: parse_expression(v, what=what))

    def _text_value(self, key: str, required: bool, limit: int) -> str | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(key, f"expected text, got {_kind(value)}")
            return None
        if "\x00" in value:
            self.problem(key, "contains a NUL byte")
            return None
        if len(value) > limit:
            self.problem(key, f"is {len(value)} characters; at most {limit}")
            return None
        return value

    def text(self, key: str, required: bool = True, limit: int = MAX_TEXT_CHARS) -> str | None:
        value = self._text_value(key, required, limit)
        if value is not None and not value.strip():
            self.problem(key, "is empty")
            return None
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.raw(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {_kind(value)}")
            return default
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.raw(key, default is None)
        if value is None:
            return default
        if value not in choices:
            self.problem(key, f"{str(value)[:40]!r} is not one of: {', '.join(choices)}")
            return None
        return str(value)

    def items(self, key: str, required: bool = True) -> Iterator[tuple[str, Any]]:
        value = self.raw(key, required)
        if value is None:
            return
        if not isinstance(value, Mapping) or not value:
            self.problem(key, f"expected a non-empty mapping, got {_kind(value)}")
            return
        yield from value.items()

    def finish(self) -> None:
        """Report keys nobody read: a typo must not be silently ignored."""
        for key in self.data:
            if key not in self.seen:
                self.problem(str(key), "is not a known field here")

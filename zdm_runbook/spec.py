"""The change spec: one logical schema change as YAML, read into typed, validated data.

Reading never stops at the first problem: every field is checked and every problem is reported
with its path (``operations[2].add_column.column: ...``) in one :class:`SpecError`. Nothing here
touches a database; :mod:`zdm_runbook.catalog` checks a spec against a live catalog.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import Problem, SpecError
from .sqltext import Expr, SqlTextError, SqlType, parse_expression, parse_type

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
CHANGE_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MAX_IDENTIFIER_BYTES = 63
MAX_SQL_CHARS = 10_000
MAX_TEXT_CHARS = 4_000
MAX_SPEC_BYTES = 1_000_000
T = TypeVar("T")


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


@dataclass(frozen=True)
class Change:
    """A validated change spec: its id, description, dual-write mode and operations."""

    id: str
    description: str
    dual_write: str
    operations: tuple[Any, ...]
    source: str | None = None
    compat: Any = None  # compat.Compat: the app versions' statements (optional)


def load_change(source: str | Path) -> Change:
    """Read and validate a spec file; raise :class:`SpecError` naming every problem."""
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([Problem("", f"cannot read {path}: {exc.strerror}")], str(path)) from exc
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError([Problem("", f"the file is {len(raw)} bytes; at most {MAX_SPEC_BYTES}")], str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem("", f"not UTF-8 text ({exc.reason})")], str(path)) from exc
    return parse_change(text, source=str(path))


def parse_change(text: str, source: str | None = None) -> Change:
    """Validate a spec given as YAML text."""
    if "\x00" in text:
        raise SpecError([Problem("", "the spec contains a NUL byte")], source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            [Problem("", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}")], source
        ) from None
    return change_from_data(data, source)


def change_from_data(data: object, source: str | None = None) -> Change:
    """Validate a spec already loaded into Python data."""
    from .compat import read_compat  # noqa: PLC0415 - both build on this module's Reader
    from .readers import read_operations  # noqa: PLC0415

    problems: list[Problem] = []
    top = Reader(data, "", problems)
    change_id = top.text("change", limit=MAX_IDENTIFIER_BYTES)
    if change_id is not None and not CHANGE_ID.match(change_id):
        top.problem("change", f"{change_id!r} is not a change id (lowercase letters, digits, dashes)")
        change_id = None
    description = top.text("description", required=False) or ""
    dual_write = top.choice("dual_write", ("trigger", "app"), default="trigger")
    operations = read_operations(top, problems)
    compat = read_compat(top, problems, Path(source).parent if source else None)
    top.finish()
    if problems or change_id is None or dual_write is None:
        raise SpecError(problems or [Problem("", "unusable spec")], source)
    return Change(change_id, description, dual_write, tuple(operations), source, compat)

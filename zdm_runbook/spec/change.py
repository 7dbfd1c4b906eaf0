"""The change spec: one logical schema change as YAML, read into typed, validated data.

Reading never stops at the first problem: every field is checked and every problem is reported
with its path (``operations[2].add_column.column: ...``) in one :class:`SpecError`. Nothing here
touches a database; :mod:`zdm_runbook.spec.catalog` checks a spec against a live catalog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.spec.compat import Compat, read_compat
from zdm_runbook.spec.operations import Operation
from zdm_runbook.spec.reader import MAX_IDENTIFIER_BYTES, Reader
from zdm_runbook.spec.readers import read_operations

CHANGE_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MAX_SPEC_BYTES = 1_000_000


@dataclass(frozen=True)
class Change:
    """A validated change spec: its id, description, dual-write mode and operations."""

    id: str
    description: str
    dual_write: str
    operations: tuple[Operation, ...]
    source: str | None = None
    compat: Compat | None = None  # the app versions' statements (optional)


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

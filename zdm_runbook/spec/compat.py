"""N/N-1 compatibility as data: the old and the new app's statements, read from the spec.

A spec's optional ``compat:`` section lists each app version's statements (inline ``sql`` or a
``file`` beside the spec) with sample ``params`` (psycopg's ``%(name)s`` placeholders); each is
parsed by pglast as one app statement. :mod:`zdm_runbook.execute.compat` runs them after a phase.
Which versions must still work follows the founding design: both until contract; after contract
only the new one, and the old one's failures are expected and shown as retired.

```yaml
compat:
  old:
    - {name: place order, sql: "INSERT INTO orders (customer_id) VALUES (%(c)s)", params: {c: 7}}
  new:
    - {name: read order, file: queries/read-order.sql, params: {id: 1}}
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError

from zdm_runbook.core.errors import Problem
from zdm_runbook.spec.model import Phase
from zdm_runbook.spec.reader import Reader

VERSIONS = ("old", "new")
# Who must still work after each phase (DESIGN.md): the old app until contract retires it.
MUST_WORK = {
    Phase.EXPAND: ("old", "new"),
    Phase.MIGRATE: ("old", "new"),
    Phase.SWITCH: ("old", "new"),
    Phase.CONTRACT: ("new",),
}
_APP_STATEMENTS = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
MAX_QUERIES = 200


@dataclass(frozen=True)
class AppQuery:
    """One statement of one app version, with sample parameters."""

    version: str
    name: str
    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Compat:
    """The spec's ``compat:`` section: each version's statements."""

    queries: tuple[AppQuery, ...]

    def of(self, version: str) -> tuple[AppQuery, ...]:
        return tuple(q for q in self.queries if q.version == version)


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")


def _statement_problem(text: str) -> str | None:
    # psycopg's placeholders are not SQL: parse with $1 in their place (and %% as %).
    try:
        parsed = parse_sql(_PLACEHOLDER.sub("$1", text).replace("%%", "%"))
    except ParseError as exc:
        return f"is not valid SQL: {exc}"
    if len(parsed) != 1:
        return f"must be exactly one statement, found {len(parsed)}"
    node = parsed[0].stmt
    if not isinstance(node, _APP_STATEMENTS):
        return f"must be an app statement (SELECT, INSERT, UPDATE, DELETE, MERGE), not {type(node).__name__}"
    return None


def read_compat(top: Reader, problems: list[Problem], base: Path | None) -> Compat | None:
    """The ``compat:`` section of a spec, every problem recorded by field path."""
    raw = top.raw("compat", required=False)
    if raw is None:
        return None
    section = Reader(raw, top.at("compat"), problems)
    queries: list[AppQuery] = []
    given = 0
    for version in VERSIONS:
        items = section.raw(version, required=False) or []
        if not isinstance(items, list):
            section.problem(version, "must be a list of statements")
            continue
        given += len(items)
        for n, item in enumerate(items):
            query = _read_query(Reader(item, f"{section.at(version)}[{n}]", problems), version, n, base)
            if query is not None:
                queries.append(query)
    section.finish()
    if len(queries) > MAX_QUERIES:
        section.problem("old", f"{len(queries)} statements; at most {MAX_QUERIES}")
    if not given and section.ok:
        problems.append(Problem(top.at("compat"), "lists no statement under old or new"))
    return Compat(tuple(queries))


def _read_query(r: Reader, version: str, n: int, base: Path | None) -> AppQuery | None:
    name = r.text("name", required=False) or f"{version} #{n + 1}"
    sql = r.text("sql", required=False, limit=100_000)
    file = r.text("file", required=False)
    params = r.raw("params", required=False) or {}
    r.finish()
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        r.problem("params", "must be a mapping of parameter names to sample values")
        params = {}
    if (sql is None) == (file is None):
        r.problem("sql", "give either sql or file")
        return None
    text = sql or ""
    if file is not None:
        path = (base or Path.cwd()) / file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            r.problem("file", f"cannot read {path}: {exc}")
            return None
    why = _statement_problem(text)
    if why:
        r.problem("file" if file else "sql", why)
        return None
    return AppQuery(version, name, text.strip().rstrip(";"), dict(params))

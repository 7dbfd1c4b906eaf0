"""The old app's statements for ``zdm lint --app-queries FILE``.

The file holds SQL statements separated by ``;``, with psycopg's ``%(name)s`` placeholders as in a
spec's ``compat`` sets. A ``-- params: {"name": value, ...}`` comment before a statement gives its
sample values: it is then run (and undone) on the migrated shadow copy, so a NOT NULL, CHECK or
GENERATED ALWAYS that its writes now violate is found. Without sample values a statement is only
prepared (its placeholders become ``$1``, ``$2``, ...): a column, table or type it names that is
gone is found.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.parser import ParseError

from zdm_runbook.core.connect import STATEMENT_TAG
from zdm_runbook.core.errors import Problem
from zdm_runbook.lint.linter import SqlFileError
from zdm_runbook.lint.placeholders import PLACEHOLDER, numbered
from zdm_runbook.lint.probe import AppStatement

_PARAMS = re.compile(r"--\s*params:\s*(\{.*\})\s*$", re.M)
_ZDM = re.compile(r"\bzdm\.", re.I)  # the ledger's own tables
_APP = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def read_app_queries(text: str, file: str) -> list[AppStatement]:
    """Every statement of ``text``; problems (a parse error, not a data statement, bad params)
    are a :class:`SqlFileError` naming the file, line and reason."""
    try:
        raws = parse_sql(numbered(text))
    except ParseError as exc:
        raise SqlFileError([Problem(file, f"cannot parse: {exc.args[0]}")]) from None
    out: list[AppStatement] = []
    problems = []
    prev_end = 0
    plain = numbered(text)
    # Statement positions are those of the numbered text; the original's spans differ only inside
    # placeholders, so slice the original by walking both in step.
    spans = _spans(text, plain)
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(plain)
        line = plain.count("\n", 0, start) + 1
        before = plain[prev_end:start] + plain[start:end]
        prev_end = end
        if not isinstance(raw.stmt, _APP):
            problems.append(Problem(f"{file}:{line}", f"{type(raw.stmt).__name__} is not an app statement"))
            continue
        body = text[spans[start] : spans[end]].strip()
        body = "\n".join(ln for ln in body.splitlines() if not ln.strip().startswith("--")).strip()
        params = None
        found = _PARAMS.findall(before)
        if found:
            try:
                params = json.loads(found[-1])
            except json.JSONDecodeError as exc:
                problems.append(Problem(f"{file}:{line}", f"params is not JSON: {exc.msg}"))
                continue
            missing = sorted(set(PLACEHOLDER.findall(body)) - set(params))
            if missing:
                problems.append(Problem(f"{file}:{line}", f"params has no value for {', '.join(missing)}"))
                continue
        out.append((f"{file}:{line} {' '.join(body.split())[:60]}", body, params))
    if problems:
        raise SqlFileError(problems)
    return out


def _spans(original: str, plain: str) -> list[int]:
    """For each offset in ``plain`` (numbered), the offset in ``original`` it came from."""
    out: list[int] = []
    i = j = 0
    while j < len(plain):
        m = PLACEHOLDER.match(original, i)
        if m:
            token = re.match(r"\$\d+", plain[j:])
            width = len(token[0]) if token else 1
            out += [i] * width
            i, j = m.end(), j + width
        else:
            out.append(i)
            i, j = i + 1, j + 1
    out.append(i)
    return out


def from_pg_stat_statements(conn: Any, limit: int = 200) -> list[AppStatement] | None:
    """The app's data statements as ``pg_stat_statements`` saw them in this database (the most
    called first; zdm's own, tagged, and the statistics view's left out), to prepare on the shadow.
    None when the extension is not installed here or not loaded by the server."""
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT query FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND rtrim(query) NOT LIKE %s ORDER BY calls DESC LIMIT %s",
                ["%" + STATEMENT_TAG.strip(), limit * 4],
            ).fetchall()
    except psycopg.Error:  # not installed here, or not in shared_preload_libraries
        return None
    out: list[AppStatement] = []
    for (query,) in rows:
        text = str(query)
        try:
            (raw,) = parse_sql(text)
        except (ParseError, ValueError):
            continue
        if isinstance(raw.stmt, _APP) and "pg_stat_statements" not in text and not _ZDM.search(text):
            out.append((f"pg_stat_statements: {' '.join(text.split())[:60]}", text, None))
        if len(out) >= limit:
            break
    return out

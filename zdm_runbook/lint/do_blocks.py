"""The SQL a ``DO`` block runs: its statements, and the ``EXECUTE``d strings that are known from the text.

Idempotent migrations wrap their DDL in ``DO $$ BEGIN IF NOT EXISTS (…) THEN ALTER TABLE …; END IF;
END $$``. PostgreSQL runs the whole block as one statement, in one transaction: every lock a
statement inside takes is held to the block's end, and a statement that may not run in a transaction
block (``CREATE INDEX CONCURRENTLY``, ``VACUUM``) fails there (measured on 15 and 18, in the lint
corpus). pglast parses the PL/pgSQL body (``parse_plpgsql``); this module walks it in order and gives
each SQL statement with its line. ``EXECUTE`` of a string literal, a concatenation of literals or a
``format()`` of literals is resolved; any other ``EXECUTE`` is reported as not known from the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import ast, parse_plpgsql, parse_sql
from pglast.parser import ParseError

_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")


@dataclass(frozen=True)
class Inner:
    """One statement the block runs: its text (None when an EXECUTE's string is not known from the
    text), its line within the file, and whether it came from an EXECUTE."""

    text: str | None
    line: int
    dynamic: bool = False
    expression: str = ""  # an unknown EXECUTE's expression, as written


def body(node: Any) -> str | None:
    """A PL/pgSQL ``DO`` block's body, or a PL/pgSQL function's or procedure's (None: another
    language, or neither)."""
    if isinstance(node, ast.CreateFunctionStmt):
        options = {str(o.defname): o.arg for o in node.options or ()}
        language, code = options.get("language"), options.get("as")
        if str(getattr(language, "sval", "")).lower() != "plpgsql" or not code:
            return None
        return str(code[0].sval) if isinstance(code, tuple) else None
    if not isinstance(node, ast.DoStmt):
        return None
    args = {str(a.defname): a for a in node.args or ()}
    language = getattr(args.get("language"), "arg", None)
    if language is not None and str(language.sval).lower() != "plpgsql":
        return None
    code = args.get("as")
    if code is None:
        return None
    return str(code.arg.sval)


def defined(node: Any) -> str | None:
    """The name a ``CREATE [OR REPLACE] FUNCTION | PROCEDURE`` in PL/pgSQL defines (its last part)."""
    if isinstance(node, ast.CreateFunctionStmt) and body(node) is not None and node.funcname:
        return str(node.funcname[-1].sval)
    return None


def called(node: Any) -> str | None:
    """The function a ``CALL f(…)`` or a ``SELECT f(…)`` (with no FROM) runs, else None."""
    call = node.funccall if isinstance(node, ast.CallStmt) else None
    if isinstance(node, ast.SelectStmt) and not node.fromClause and len(node.targetList or ()) == 1:
        call = node.targetList[0].val  # type: ignore[index]
    if isinstance(call, ast.FuncCall) and call.funcname:
        return str(call.funcname[-1].sval)
    return None


def statements(node: Any, text: str, line: int) -> list[Inner] | None:
    """The statements of the ``DO`` block (or PL/pgSQL function) ``node``, its text ``text``
    starting on ``line``, in the order written; None when it is neither or its body does not parse."""
    if isinstance(node, ast.CreateFunctionStmt):
        return None  # defining runs nothing; the call does (linter.py)
    return run_by(node, text, line)


def run_by(node: Any, text: str, line: int) -> list[Inner] | None:
    """What running ``node`` (a DO block, or a PL/pgSQL function's definition) runs."""
    code = body(node)
    if code is None:
        return None
    at = text.find(code)
    first = line + (text.count("\n", 0, at) if at >= 0 else 0)
    wrapper = f"CREATE FUNCTION zdm_do() RETURNS void LANGUAGE plpgsql AS $zdm_do${code}$zdm_do$"
    try:
        tree = parse_plpgsql(wrapper)
    except ParseError:
        return None
    return [Inner(sql, first + lineno - 1, dynamic, expr) for sql, lineno, dynamic, expr in _walk(tree, 1)]


def _walk(node: Any, lineno: int) -> Iterator[tuple[str | None, int, bool, str]]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, lineno)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if isinstance(value, list):
            yield from _walk(value, lineno)
            continue
        if not isinstance(value, dict):
            continue
        at = int(value.get("lineno", lineno))
        static = _query(value.get("sqlstmt") or value.get("expr")) if key in _STATIC else None
        if static is not None:  # a statement, or PERFORM set_config(…), pg_advisory_lock(…)
            yield static, at, False, ""
        elif key in _ENDS:
            yield _ENDS[key], at, False, ""
        elif key == "PLpgSQL_stmt_dynexecute":
            expression = _query(value.get("query")) or ""
            yield resolve(expression), at, True, expression
        else:
            yield from _walk(value, at)


_STATIC = frozenset({"PLpgSQL_stmt_execsql", "PLpgSQL_stmt_perform"})
# COMMIT and ROLLBACK in a procedure (or a DO block outside a transaction) end the transaction and
# start the next one at once, as COMMIT AND CHAIN does.
_ENDS = {"PLpgSQL_stmt_commit": "COMMIT AND CHAIN", "PLpgSQL_stmt_rollback": "ROLLBACK AND CHAIN"}


def _query(expr: Any) -> str | None:
    inner = (expr or {}).get("PLpgSQL_expr", {})
    query = inner.get("query")
    return str(query) if query else None


def resolve(expression: str) -> str | None:
    """The string an ``EXECUTE`` expression makes, when the text alone says (None otherwise)."""
    try:
        parsed = parse_sql(f"SELECT {expression}")
    except ParseError:
        return None
    select = parsed[0].stmt if parsed else None
    if not isinstance(select, ast.SelectStmt) or len(select.targetList or ()) != 1:
        return None
    return _value(select.targetList[0].val)  # type: ignore[index]


def _value(node: Any) -> str | None:
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return str(node.val.sval)
    if isinstance(node, ast.A_Expr) and [str(n.sval) for n in node.name or ()] == ["||"]:
        left, right = _value(node.lexpr), _value(node.rexpr)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.FuncCall) and [str(n.sval) for n in node.funcname or ()][-1:] == ["format"]:
        args = [_value(a) for a in node.args or ()]
        if not args or any(a is None for a in args):
            return None
        return _format(str(args[0]), [str(a) for a in args[1:]])
    if isinstance(node, ast.TypeCast):
        return _value(node.arg)
    return None


def _format(template: str, args: list[str]) -> str | None:
    """PostgreSQL's ``format()`` for ``%s``, ``%I``, ``%L`` and ``%%`` (None for anything else)."""
    out, i, n = [], 0, 0
    while i < len(template):
        ch = template[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        spec = template[i + 1 : i + 2]
        i += 2
        if spec == "%":
            out.append("%")
            continue
        if spec not in ("s", "I", "L") or n >= len(args):
            return None
        arg, n = args[n], n + 1
        if spec == "I":
            arg = arg if _PLAIN_IDENT.fullmatch(arg) else '"' + arg.replace('"', '""') + '"'
        elif spec == "L":
            arg = "'" + arg.replace("'", "''") + "'"
        out.append(arg)
    return "".join(out)

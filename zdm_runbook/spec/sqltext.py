"""SQL text from a spec, checked by PostgreSQL's own parser (pglast) before it may become SQL.

An expression must parse as exactly one expression and a type as exactly one type name; what
reaches the database is pglast's re-rendering of the parsed tree, so a second statement, a
comment trick or a stray parenthesis cannot survive. This is the only module that turns text
into :class:`psycopg.sql.SQL`; everything else composes with ``sql.Identifier``/``sql.Literal``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, LiteralString, cast

from pglast import ast, parse_sql, visitors
from pglast.parser import ParseError
from pglast.stream import RawStream
from psycopg import sql

from zdm_runbook.spec.volatile_builtins import VOLATILE

# Functions whose value differs per row: as a column DEFAULT they force a table rewrite, and on
# PostgreSQL the "fast default" applies only to non-volatile expressions. The stable now() family
# is refused too: every existing row would get the time of the ALTER, which a backfill says better.
TIME_OF_CALL_FUNCTIONS = frozenset(
    {
        "now",
        "transaction_timestamp",
        "statement_timestamp",
        "clock_timestamp",
        "timeofday",
        "txid_current",  # STABLE: one value for the ALTER's transaction, given to every existing row
        "pg_current_xact_id",
    }
)
VOLATILE_FUNCTIONS = VOLATILE  # read from pg_proc on 15 and 18: spec/volatile_builtins.py
# Functions with side effects outside the row: never acceptable inside a spec's expression.
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "set_config",
        "pg_advisory_lock",
        "pg_advisory_xact_lock",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "dblink",
        "dblink_exec",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "lo_import",
        "lo_export",
        "lo_unlink",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_drop_replication_slot",
    }
)
TIME_OF_CALL_KEYWORDS = frozenset(
    {"CURRENT_TIMESTAMP", "CURRENT_TIME", "LOCALTIMESTAMP", "LOCALTIME", "CURRENT_DATE"}
)


Fragment = sql.SQL  # the annotation of the ``sql`` properties below, where ``sql`` is shadowed


class SqlTextError(ValueError):
    """The text is not one acceptable SQL expression, type or statement; the message says why."""


def trusted(text: str) -> sql.SQL:
    """Wrap text that pglast produced (or that is a fixed fragment) as SQL. Nothing else calls SQL(str)."""
    return sql.SQL(cast(LiteralString, text))  # type: ignore[redundant-cast]  # mypy: LiteralString == str


@dataclass(frozen=True)
class Expr:
    """One parsed SQL expression: canonical text, the columns and functions it references."""

    text: str
    node: Any = field(repr=False, compare=False)
    columns: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()

    @property
    def sql(self) -> Fragment:
        return trusted(self.text)

    def plain_column(self) -> str | None:
        """The column this expression is, if it is one bare column, maybe cast (``c``, ``c::bigint``):
        then a value of the column maps to the new type by a cast alone."""
        node = self.node
        while isinstance(node, ast.TypeCast):
            node = node.arg
        fields = (node.fields or ()) if isinstance(node, ast.ColumnRef) else ()
        return str(fields[0].sval) if len(fields) == 1 and isinstance(fields[0], ast.String) else None

    def with_row_prefix(self, prefix: str) -> Fragment:
        """The expression with each bare column ``c`` written ``prefix.c`` (e.g. NEW.c in a trigger)."""
        node = _Prefixer(prefix)(_copy(self.node))
        return trusted(RawStream()(node))


@dataclass(frozen=True)
class SqlType:
    """One parsed type name such as ``bigint`` or ``numeric(12, 2)``, in canonical spelling."""

    text: str

    @property
    def sql(self) -> Fragment:
        return trusted(self.text)


class _References(visitors.Visitor):
    def __init__(self) -> None:
        self.columns: set[str] = set()
        self.qualified: list[str] = []
        self.functions: set[str] = set()
        self.keywords: set[str] = set()
        self.sublinks = 0
        self.params = 0

    def visit_ColumnRef(self, _ancestors: Any, node: Any) -> None:
        names = [str(f.sval) if isinstance(f, ast.String) else "*" for f in node.fields]
        if len(names) == 1:
            self.columns.add(names[0])
        else:
            self.qualified.append(".".join(names))

    def visit_FuncCall(self, _ancestors: Any, node: Any) -> None:
        self.functions.add(node.funcname[-1].sval.lower())

    def visit_SQLValueFunction(self, _ancestors: Any, node: Any) -> None:
        self.keywords.add(RawStream()(node).split("(")[0].upper())

    def visit_SubLink(self, _ancestors: Any, _node: Any) -> None:
        self.sublinks += 1

    def visit_ParamRef(self, _ancestors: Any, _node: Any) -> None:
        self.params += 1


class _Prefixer(visitors.Visitor):
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def visit_ColumnRef(self, _ancestors: Any, node: Any) -> Any:
        if len(node.fields) == 1 and isinstance(node.fields[0], ast.String):
            return ast.ColumnRef(fields=(ast.String(sval=self.prefix), node.fields[0]))
        return None


def _copy(node: Any) -> Any:
    return type(node)(node())  # pglast nodes round-trip through their dict form


def _parse_single_select(text: str, what: str) -> Any:
    if not isinstance(text, str) or not text.strip():
        raise SqlTextError(f"an empty {what}")
    if "\x00" in text:
        raise SqlTextError(f"the {what} contains a NUL byte")
    if ";" in text and _has_semicolon_outside_literals(text):
        raise SqlTextError(f"a {what} cannot contain ';' (only one {what}, no second statement)")
    try:
        stmts = parse_sql(f"SELECT {text}")
    except ParseError as exc:
        raise SqlTextError(f"not a valid {what}: {exc}") from None
    if len(stmts) != 1:
        raise SqlTextError(f"must be exactly one {what}, not {len(stmts)} statements")
    select: Any = stmts[0].stmt
    ok = (
        isinstance(select, ast.SelectStmt)
        and select.targetList is not None
        and len(select.targetList) == 1
        and not any(
            getattr(select, attr, None)
            for attr in (
                "fromClause",
                "whereClause",
                "groupClause",
                "havingClause",
                "sortClause",
                "limitCount",
                "limitOffset",
                "withClause",
                "distinctClause",
                "windowClause",
                "lockingClause",
                "intoClause",
            )
        )
        and select.targetList[0].name is None
    )
    if not ok:
        raise SqlTextError(f"must be exactly one {what}")
    return select.targetList[0].val


def _has_semicolon_outside_literals(text: str) -> bool:
    in_single = in_double = False
    for ch in text:
        if ch == "'" and not in_double:
            in_single = not in_single
        elif ch == '"' and not in_single:
            in_double = not in_double
        elif ch == ";" and not in_single and not in_double:
            return True
    return False


def parse_expression(text: str, *, what: str = "expression", allow_subquery: bool = False) -> Expr:
    """Parse one scalar SQL expression; refuse statements, sub-queries and side-effect functions."""
    node = _parse_single_select(text, what)
    refs = _References()
    refs(node)
    if refs.sublinks and not allow_subquery:
        raise SqlTextError(f"a {what} cannot contain a sub-query")
    if refs.params:
        raise SqlTextError(f"a {what} cannot contain $n parameters")
    if refs.qualified:
        raise SqlTextError(
            f"a {what} refers to columns of its own row by bare name; {refs.qualified[0]!r} is qualified"
        )
    forbidden = sorted(refs.functions & FORBIDDEN_FUNCTIONS)
    if forbidden:
        raise SqlTextError(f"{forbidden[0]}() has side effects and is not allowed in a {what}")
    return Expr(
        text=RawStream()(node),
        node=node,
        columns=frozenset(refs.columns),
        functions=frozenset(refs.functions),
        keywords=frozenset(refs.keywords),
    )


def parse_type(text: str) -> SqlType:
    """Parse one type name (``bigint``, ``varchar(20)[]``, ``timestamp with time zone``)."""
    if not isinstance(text, str) or not text.strip():
        raise SqlTextError("an empty type")
    node = _parse_single_select(f"NULL::{text}", "type")
    if not isinstance(node, ast.TypeCast) or not isinstance(node.arg, ast.A_Const) or node.typeName is None:
        raise SqlTextError("must be exactly one type name")
    return SqlType(text=RawStream()(node.typeName))


def volatility_problem(expr: Expr) -> str | None:
    """Why ``expr`` cannot be a column default on a live table (None when it can)."""
    volatile = sorted(expr.functions & VOLATILE_FUNCTIONS)
    if volatile:
        return (
            f"{volatile[0]}() is volatile: as a DEFAULT it rewrites the whole table under an"
            " ACCESS EXCLUSIVE lock; add the column without it and use a `backfill` operation"
        )
    timed = sorted(expr.functions & TIME_OF_CALL_FUNCTIONS) or sorted(expr.keywords & TIME_OF_CALL_KEYWORDS)
    if timed:
        return (
            f"{timed[0]} as a DEFAULT gives every existing row the time of the ALTER; add the"
            " column without a default and fill existing rows with a `backfill` operation"
        )
    return None


@dataclass(frozen=True)
class Statement:
    """One statement of a raw SQL text: its kind, canonical text and whether it is CONCURRENTLY."""

    kind: str
    text: str
    concurrent: bool
    node: Any = field(repr=False, compare=False)

    @property
    def sql(self) -> Fragment:
        return trusted(self.text)


def parse_statements(text: str) -> list[Statement]:
    """Split and parse a raw SQL text into statements (the spec's ``raw_sql`` operation)."""
    if not isinstance(text, str) or not text.strip():
        raise SqlTextError("empty SQL")
    if "\x00" in text:
        raise SqlTextError("the SQL contains a NUL byte")
    try:
        raws = parse_sql(text)
    except ParseError as exc:
        raise SqlTextError(f"not valid SQL: {exc}") from None
    out = []
    for raw in raws:
        node: Any = raw.stmt
        concurrent = bool(getattr(node, "concurrent", False)) or (
            isinstance(node, ast.ReindexStmt) and "concurrently" in RawStream()(node).lower()
        )
        out.append(Statement(type(node).__name__, RawStream()(node), concurrent, node))
    if not out:
        raise SqlTextError("no statement in the SQL")
    return out


def regclass(schema: str, name: str) -> sql.Composed:
    """``to_regclass('"schema"."name"')``: NULL when the relation does not exist."""
    return sql.SQL("to_regclass(format('%I.%I', {}, {}))").format(sql.Literal(schema), sql.Literal(name))

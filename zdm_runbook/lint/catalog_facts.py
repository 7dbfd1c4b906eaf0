"""What the live catalog adds to ``zdm lint``: facts no text-only linter can know.

- Whether a type change rewrites: the very ALTER runs on an empty temporary copy of the table
  (``CREATE TEMP TABLE … (LIKE …)``) in a transaction that is rolled back, and the copy's file
  node tells. The server's own rules decide: varchar widening and varchar → text are catalog-only.
- Whether SET NOT NULL is cheap: a validated ``CHECK (col IS NOT NULL)`` (or the column already
  NOT NULL) lets PostgreSQL 12+ skip the scan.
- What depends on a column being dropped, renamed or retyped: views, triggers, policies, indexes and
  generated columns, by name.
- Whether a column widened to bigint is a key, or holds one through its foreign key: then the way
  to do it is ``change_key_type``, named with its spec line (``change_type``'s contract would drop
  the key or the foreign key with the old column).

Nothing here touches the real table beyond reading the catalog and ``LIKE``'s brief AccessShareLock.
A question the catalog cannot answer (the table is not in it, a query fails) is *unknown*, and
unknown never makes a finding milder: only a positive answer does.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pglast
import psycopg
from pglast import ast
from pglast.enums.parsenodes import AlterTableType
from pglast.stream import RawStream
from psycopg import sql

from zdm_runbook.lint.analysis import Analysis
from zdm_runbook.lint.hazards import Finding
from zdm_runbook.spec.column_uses import column_uses
from zdm_runbook.spec.keys import WIDENS, key_facts
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import trusted

Conn = psycopg.Connection[Any]
PROBE = "zdm_lint_probe"


def relation_parts(rv: Any) -> tuple[str, ...]:
    """The relation's name parts as the parser resolved them (unquoted names already folded)."""
    return (str(rv.schemaname), str(rv.relname)) if getattr(rv, "schemaname", None) else (str(rv.relname),)


def regclass_text(parts: tuple[str, ...]) -> str:
    """``parts`` as text that ``to_regclass`` reads back unchanged: every part double-quoted, so a
    mixed-case or odd name is found instead of being case-folded into another (missing) one."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def rewrites(conn: Conn, stmt: ast.AlterTableStmt) -> bool | None:
    """Whether ``stmt`` rewrites its table on this server, probed on an empty temporary copy.

    None when the probe cannot tell (the table is missing, or the statement fails on the copy)."""
    parts = relation_parts(stmt.relation)
    probe = copy.deepcopy(stmt)
    probe.relation = ast.RangeVar(relname=PROBE, inh=True, relpersistence="t")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('lock_timeout', '1000', true)")
            row = conn.execute("SELECT to_regclass(%s)::text", [regclass_text(parts)]).fetchone()
            if not row or row[0] is None:
                return None
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED) ON COMMIT DROP"
                ).format(sql.Identifier(PROBE), sql.Identifier(*parts))
            )
            before = conn.execute(
                "SELECT pg_relation_filenode(%s::regclass)", [f"pg_temp.{PROBE}"]
            ).fetchone()
            conn.execute(trusted(RawStream()(probe)))  # pglast's rendering of the parsed statement
            after = conn.execute("SELECT pg_relation_filenode(%s::regclass)", [f"pg_temp.{PROBE}"]).fetchone()
    except psycopg.Error:
        return None
    return before != after


def not_null_proven(conn: Conn, table: tuple[str, ...], column: str) -> bool | None:
    """True when SET NOT NULL needs no scan: already NOT NULL, or a validated CHECK (col IS NOT NULL).

    None (unknown) when the table is not in the catalog or the catalog cannot be read."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT to_regclass(%(t)s) IS NOT NULL,"
                " EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%(t)s)"
                "   AND attname = %(c)s AND attnotnull)"
                " OR EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%(t)s)"
                "   AND contype = 'c' AND convalidated"
                "   AND pg_get_constraintdef(oid) = format('CHECK ((%%I IS NOT NULL))', %(c)s::text))",
                {"t": regclass_text(table), "c": column},
            ).fetchone()
    except psycopg.Error:
        return None
    if row is None or not row[0]:
        return None
    return bool(row[1])


def dependents(conn: Conn, table: tuple[str, ...], column: str) -> list[str] | None:
    """What uses ``column`` (:mod:`zdm_runbook.spec.column_uses`): views, triggers, policies, indexes,
    constraints, generated columns, statistics.

    None (unknown, never "nothing") when the table is not in the catalog or the query fails."""
    try:
        with conn.transaction():
            found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [regclass_text(table)]).fetchone()
            if not (found and found[0]):
                return None
            where = sql.SQL("to_regclass({})").format(sql.Literal(regclass_text(table)))
            return [use.what for use in column_uses(conn, where, column)]
    except psycopg.Error:
        return None


def objects_moved(sql_text: str) -> set[str]:
    """The names of the views, policies, triggers, rules and functions a statement of ``sql_text``
    drops or replaces (``DROP VIEW``, ``CREATE OR REPLACE VIEW``, ``ALTER POLICY``...): a step that
    runs before a column's drop may move what uses the column off it."""
    names: set[str] = set()
    for raw in pglast.parse_sql(sql_text):
        node = raw.stmt
        if isinstance(node, ast.DropStmt):
            for obj in node.objects or ():
                parts = obj.objname if isinstance(obj, ast.ObjectWithArgs) else obj
                if isinstance(parts, tuple) and parts and isinstance(parts[-1], ast.String):
                    names.add(str(parts[-1].sval))
        elif isinstance(node, ast.ViewStmt) and node.replace and node.view is not None:
            names.add(str(node.view.relname))
        elif isinstance(node, ast.AlterPolicyStmt) and node.policy_name:
            names.add(str(node.policy_name))
        elif isinstance(node, ast.CreateTrigStmt) and node.replace and node.trigname:
            names.add(str(node.trigname))
        elif isinstance(node, ast.CreateFunctionStmt) and node.replace and node.funcname:
            names.add(str(node.funcname[-1].sval))
    return names


def dropped_columns(sql_text: str) -> list[tuple[tuple[str, ...], str]]:
    """Each column a statement of ``sql_text`` drops: its table's name parts, and its name."""
    found: list[tuple[tuple[str, ...], str]] = []
    for raw in pglast.parse_sql(sql_text):
        node = raw.stmt
        if not isinstance(node, ast.AlterTableStmt) or node.relation is None:
            continue
        table = relation_parts(node.relation)
        for cmd in node.cmds or ():
            if AlterTableType(int(cmd.subtype or 0)) == AlterTableType.AT_DropColumn:
                found.append((table, str(cmd.name)))
    return found


def refine(conn: Conn, a: Analysis, node: Any, found: list[Finding], version: int) -> list[Finding]:
    """Findings corrected by the catalog: cheap type changes and proven NOT NULLs become info,
    and drops, renames and type changes name what depends on the column."""
    if isinstance(node, ast.IndexStmt) and node.idxname and node.relation is not None:
        return [_index_refined(conn, f, node) for f in found]
    if not isinstance(node, ast.AlterTableStmt | ast.RenameStmt) or node.relation is None:
        return found
    table = relation_parts(node.relation)
    columns: dict[str, str] = {}  # column -> subcommand
    if isinstance(node, ast.RenameStmt) and node.subname:
        columns[str(node.subname)] = "rename"
    for cmd in getattr(node, "cmds", None) or ():
        columns[str(cmd.name)] = AlterTableType(int(cmd.subtype or 0)).name
    cheap_type = None
    if "AT_AlterColumnType" in columns.values() and isinstance(node, ast.AlterTableStmt):
        cheap_type = rewrites(conn, node) is False
    refined = [_refined(conn, f, columns, table, cheap_type, version) for f in found]
    widened = {str(c.name) for c in getattr(node, "cmds", None) or () if _to_bigint(c)}
    return [_key_refined(conn, _widen_advice(conn, f, table, widened), node, table, version) for f in refined]


def _to_bigint(cmd: Any) -> bool:
    if AlterTableType(int(cmd.subtype or 0)) != AlterTableType.AT_AlterColumnType:
        return False
    names: tuple[Any, ...] = tuple(getattr(getattr(cmd.def_, "typeName", None), "names", None) or ())
    return bool(names) and getattr(names[-1], "sval", "") in ("int8", "bigint")


def _widen_advice(conn: Conn, f: Finding, table: tuple[str, ...], widened: set[str]) -> Finding:
    """A key, or a column that holds one, widened to bigint: the way is change_key_type."""
    if f.rule != "alter-column-type" or len(widened) != 1:
        return f
    column = next(iter(widened))
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT n.nspname, c.relname, c.relkind = 'p' FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')",
                [regclass_text(table)],
            ).fetchone()
            facts = key_facts(conn, Table(str(row[0]), str(row[1])), column) if row else None
    except psycopg.Error:
        return f
    if row is None or facts is None or facts.type not in WIDENS:
        return f
    if row[2] and not facts.holds_only:  # a partitioned table's own key: change_key_type refuses it
        return f
    if facts.is_key:
        why = f"{column} is {facts.describe()}: a new column's contract would drop that with the old one"
    elif facts.references:
        held = ", ".join(facts.references)
        why = f"{column} holds a key ({held}): a new column's contract would drop its foreign key"
    else:
        return f
    return replace(
        f,
        safe_alternative="expand and contract that keeps the name: change_key_type:"
        f" {{table: {row[0]}.{row[1]}, column: {column}}} ({why})",
    )


def _index_refined(conn: Conn, f: Finding, node: Any) -> Finding:
    """CREATE INDEX CONCURRENTLY IF NOT EXISTS: whether an INVALID index of that name is there now."""
    if f.rule != "concurrent-index-if-not-exists":
        return f
    schema = relation_parts(node.relation)[:-1]
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
                [regclass_text((*schema, str(node.idxname)))],
            ).fetchone()
    except psycopg.Error:
        return f
    if row is not None and not row[0]:
        return replace(
            f,
            severity="error",
            message=f"{f.message}: {node.idxname} is INVALID now, and would stay so",
        )
    return replace(f, severity="info", message=f"{f.message} (none by this name is INVALID now)")


def _key_refined(conn: Conn, f: Finding, node: Any, table: tuple[str, ...], version: int) -> Finding:
    """ADD PRIMARY KEY USING INDEX: no scan when every column of the index is already NOT NULL
    or proven so by a validated CHECK (PostgreSQL 12+), read from the catalog."""
    if f.rule != "primary-key-using-index-scan" or version < 12:
        return f
    index = next((str(c.def_.indexname) for c in node.cmds or () if getattr(c.def_, "indexname", None)), None)
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY (i.indkey) WHERE i.indexrelid = to_regclass(%s)",
                [regclass_text((*table[:-1], index or ""))],
            ).fetchall()
    except psycopg.Error:
        return f
    if rows and all(not_null_proven(conn, table, str(r[0])) is True for r in rows):
        return replace(
            f,
            rule="primary-key-using-index-proven",
            severity="info",
            message="every key column is NOT NULL, or proven so by a validated CHECK: no scan",
            safe_alternative="none needed",
        )
    return f


def _refined(
    conn: Conn,
    f: Finding,
    columns: dict[str, str],
    table: tuple[str, ...],
    cheap_type: bool | None,
    version: int,
) -> Finding:
    column = next((c for c, sub in columns.items() if _RULE_SUBS.get(f.rule) == sub), None)
    if f.rule == "alter-column-type" and cheap_type:
        f = replace(
            f,
            rule="alter-column-type-catalog-only",
            severity="info",
            rewrites=False,
            message="binary-coercible on this server: no rewrite (still a brief AccessExclusiveLock); the"
            " old app must accept the new type",
            safe_alternative="none needed",
        )
    elif (
        f.rule == "set-not-null-scan"
        and column
        and version >= 12
        and not_null_proven(conn, table, column) is True
    ):
        f = replace(
            f,
            rule="set-not-null-proven",
            severity="info",
            message="a validated CHECK (col IS NOT NULL) already proves it: no scan (PostgreSQL 12+)",
            safe_alternative="drop the CHECK afterwards",
        )
    if column and f.rule in ("drop-column", "alter-column-type", "rename"):
        used_by = dependents(conn, table, column)
        if used_by is None:
            where = ".".join(table)
            f = replace(
                f, message=f"{f.message}; what uses {column} is unknown ({where} is not in the catalog)"
            )
        elif used_by:
            f = replace(f, message=f"{f.message}; {column} is used by {', '.join(used_by)}")
    return f


_RULE_SUBS = {
    "alter-column-type": "AT_AlterColumnType",
    "set-not-null-scan": "AT_SetNotNull",
    "drop-column": "AT_DropColumn",
    "rename": "rename",
}

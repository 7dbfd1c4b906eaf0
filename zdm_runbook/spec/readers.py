"""Reading each operation of a spec from its YAML map, with every problem recorded by path.

Each reader checks its fields (identifiers, pglast-parsed types and expressions, volatility of
defaults, phase rules for raw SQL) and returns the operation's dataclass, or None when it
recorded a problem; :func:`read_operations` adds the checks that span operations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import get_args

from zdm_runbook.core.errors import Problem
from zdm_runbook.spec import alter_readers as alter
from zdm_runbook.spec import crosschecks
from zdm_runbook.spec.model import Phase
from zdm_runbook.spec.operations import (
    FK_ACTIONS,
    INDEX_METHODS,
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddNotNullColumn,
    AddPrimaryKey,
    AddUnique,
    Backfill,
    ChangeKeyType,
    ChangeType,
    ColumnDef,
    CreateIndex,
    CreateTable,
    DropColumn,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    DropTable,
    Operation,
    RawSql,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RenameTable,
    SetComment,
    SetDefault,
    SetNotNull,
    SetReplicaIdentity,
)
from zdm_runbook.spec.reader import MAX_IDENTIFIER_BYTES, Reader
from zdm_runbook.spec.sqltext import (
    Expr,
    SqlTextError,
    SqlType,
    Statement,
    parse_statements,
    volatility_problem,
)


def _default(r: Reader, key: str = "default") -> Expr | None:
    """A column default: one expression, and non-volatile (a volatile one rewrites the table)."""
    expr = r.expr(key, required=False, what="default expression")
    if expr is not None:
        why = volatility_problem(expr)
        if why:
            r.problem(key, why)
            return None
    return expr


def _read_create_table(r: Reader) -> CreateTable | None:
    table = r.table()
    columns: list[ColumnDef] = []
    raw_columns = r.raw("columns", True)
    if raw_columns is not None and (not isinstance(raw_columns, list) or not raw_columns):
        r.problem("columns", "expected a non-empty list of {name, type} maps")
    elif raw_columns:
        for i, item in enumerate(raw_columns):
            c = Reader(item, f"{r.at('columns')}[{i}]", r.problems)
            name, ctype = c.ident("name"), c.sqltype()
            not_null, default = c.flag("not_null"), c.expr("default", False, "default expression")
            c.finish()
            if name and ctype:
                columns.append(ColumnDef(name, ctype, not_null, default))
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            r.problem("columns", "names a column twice")
    pk = r.idents("primary_key", required=False)
    if pk and columns and not set(pk) <= {c.name for c in columns}:
        r.problem("primary_key", "names a column that is not in columns")
    if table and len(columns) == len(raw_columns or []):
        return CreateTable(table, tuple(columns), pk)
    return None


def _read_add_column(r: Reader) -> AddColumn | None:
    table, column, ctype, default = r.table(), r.ident("column"), r.sqltype(), _default(r)
    if r.has("not_null"):
        r.problem("not_null", "add_column adds a nullable column; use add_not_null_column")
    if table and column and ctype:
        return AddColumn(table, column, ctype, default)
    return None


def _read_create_index(r: Reader) -> CreateIndex | None:
    table, name = r.table(), r.ident("name")
    columns = r.idents("columns", required=False)
    expression = r.expr("expression", required=False)
    if r.has("columns") == r.has("expression"):
        r.problem("columns", "give exactly one of columns or expression")
    unique = r.flag("unique")
    where = r.expr("where", required=False, what="predicate")
    method = r.choice("method", INDEX_METHODS, default="btree")
    if table and name and method and (columns or expression):
        return CreateIndex(table, name, columns, expression, unique, where, method)
    return None


def _read_drop_index(r: Reader) -> DropIndex | None:
    name, schema = r.ident("name"), r.ident("schema", required=False) or "public"
    return DropIndex(schema, name) if name else None


def _read_add_check(r: Reader) -> AddCheck | None:
    table, name = r.table(), r.ident("name")
    expression = r.expr("expression", what="check expression")
    if table and name and expression:
        return AddCheck(table, name, expression)
    return None


def _read_add_foreign_key(r: Reader) -> AddForeignKey | None:
    table, name, columns = r.table(), r.ident("name"), r.idents("columns")
    ref = Reader(r.raw("references", True) or {}, r.at("references"), r.problems)
    ref_table, ref_columns = (ref.table(), ref.idents("columns")) if r.has("references") else (None, None)
    if r.has("references"):
        ref.finish()
    on_delete = r.choice("on_delete", FK_ACTIONS, default="no action")
    if columns and ref_columns and len(columns) != len(ref_columns):
        r.problem("references.columns", f"has {len(ref_columns)} columns; columns has {len(columns)}")
        return None
    if table and name and columns and ref_table and ref_columns and on_delete:
        return AddForeignKey(table, name, columns, ref_table, ref_columns, on_delete)
    return None


def _read_add_unique(r: Reader) -> AddUnique | None:
    table, name, columns = r.table(), r.ident("name"), r.idents("columns")
    return AddUnique(table, name, columns) if table and name and columns else None


def _read_set_not_null(r: Reader) -> SetNotNull | None:
    table, column = r.table(), r.ident("column")
    return SetNotNull(table, column) if table and column else None


def _read_backfill(r: Reader) -> Backfill | None:
    table = r.table()
    assignments: list[tuple[str, Expr]] = []
    bad = False
    for column, value in r.items("set"):
        sub = Reader({"column": column, "value": value}, r.at("set"), r.problems)
        name = sub.ident("column")
        expr = Reader({column: value}, r.at("set"), r.problems).expr(str(column))
        bad = bad or not (name and expr)
        if name and expr:
            assignments.append((name, expr))
    where = r.expr("where", required=False, what="predicate")
    if table and assignments and not bad:
        return Backfill(table, tuple(assignments), where)
    return None


def _read_drop_column(r: Reader) -> DropColumn | None:
    table, column = r.table(), r.ident("column")
    return DropColumn(table, column) if table and column else None


def _read_drop_constraint(r: Reader) -> DropConstraint | None:
    table, name = r.table(), r.ident("name")
    return DropConstraint(table, name) if table and name else None


def _read_drop_table(r: Reader) -> DropTable | None:
    table = r.table()
    return DropTable(table) if table else None


def _read_raw_sql(r: Reader) -> RawSql | None:
    phase = r.choice("phase", tuple(p.value for p in Phase))
    reason = r.text("reason")
    description = r.text("description", required=False) or "raw SQL"
    text = r.text("sql")
    statements: list[Statement] = []
    if text is not None:
        try:
            statements = parse_statements(text)
        except SqlTextError as exc:
            r.problem("sql", str(exc))
    concurrent = [s for s in statements if s.concurrent]
    if concurrent and len(statements) > 1:
        r.problem(
            "sql",
            f"{concurrent[0].kind} CONCURRENTLY cannot run in a transaction block: put it in a"
            " raw_sql operation of its own",
        )
        return None
    if phase:
        for s in statements:
            why = _out_of_phase(s, Phase(phase))
            if why:
                r.problem("sql", why)
                return None
    if phase and reason and statements:
        return RawSql(Phase(phase), reason, tuple(statements), description)
    return None


# ALTER TABLE subcommands (PostgreSQL's own AT_* names) that break the old app: contract only.
_CONTRACT_ONLY = {"AT_DropColumn": "DROP COLUMN", "AT_AlterColumnType": "ALTER COLUMN ... TYPE"}
_SWITCH_OR_LATER = {"AT_SetNotNull": "SET NOT NULL"}


def _out_of_phase(stmt: Statement, phase: Phase) -> str | None:
    """A coarse check that raw SQL keeps destructive statements in contract (lint does the rest)."""
    what: str | None = None
    earliest = Phase.CONTRACT
    if stmt.kind in ("DropStmt", "TruncateStmt"):
        what = stmt.text.split(" (")[0][:60]
    elif stmt.kind == "RenameStmt":
        what = "a RENAME (use rename_column)"
    elif stmt.kind == "AlterTableStmt":
        for cmd in stmt.node.cmds or ():
            name = getattr(cmd.subtype, "name", "")
            if name in _CONTRACT_ONLY:
                what = _CONTRACT_ONLY[name]
                break
            if name in _SWITCH_OR_LATER:
                what, earliest = _SWITCH_OR_LATER[name], Phase.SWITCH
                break
    if what and phase.order < earliest.order:
        return f"{what} breaks the old app: it belongs in {earliest.value}, not {phase.value}"
    return None


def _read_rename_column(r: Reader) -> RenameColumn | None:
    table, old, new, ctype = r.table(), r.ident("from"), r.ident("to"), r.sqltype()
    not_null = r.flag("not_null") if r.has("not_null") else None
    if old and new and old == new:
        r.problem("to", "is the same as from")
        return None
    if table and old and new and ctype:
        return RenameColumn(table, old, new, ctype, not_null)
    return None


def _read_change_type(r: Reader) -> ChangeType | None:
    table, column, new_column, ctype = (
        r.table(),
        r.ident("column"),
        r.ident("new_column"),
        r.sqltype(),
    )
    using, reverse = r.expr("using"), r.expr("reverse")
    default = r.expr("default", required=False)
    not_null = r.flag("not_null") if r.has("not_null") else None
    if default is not None and default.columns:
        r.problem("default", f"names {', '.join(sorted(default.columns))}: a default cannot use columns")
        return None
    if column and new_column and column == new_column:
        r.problem("new_column", "must differ from column: the type changes through a new column")
        return None
    if using and column and column not in using.columns:
        r.problem("using", f"must compute the new value from the old column {column}")
    elif reverse and new_column and new_column not in reverse.columns:
        r.problem("reverse", f"must compute the old value from the new column {new_column}")
    elif table and column and new_column and ctype and using and reverse:
        return ChangeType(table, column, new_column, ctype, using, reverse, not_null, default)
    return None


KEY_TYPES = ("bigint", "int8")


def _read_change_key_type(r: Reader) -> ChangeKeyType | None:
    table, column = r.table(), r.ident("column")
    new_column = r.ident("new_column", required=False)
    ctype = r.sqltype(required=False)
    if ctype is not None and ctype.text.strip().lower() not in KEY_TYPES:
        r.problem("type", f"{ctype.text!r}: change_key_type widens a smallint or integer key to bigint")
        return None
    if column and new_column is None:
        new_column = f"{column}_zdm"
        if len(new_column.encode()) > MAX_IDENTIFIER_BYTES:
            r.problem("new_column", f"is required: {new_column[:20]!r}... would pass PostgreSQL's 63 bytes")
            return None
    if column and new_column == column:
        r.problem("new_column", "must differ from column: the key is swapped with a new column")
        return None
    if table and column and new_column:
        return ChangeKeyType(table, column, new_column, ctype or SqlType("bigint"))
    return None


def _read_add_not_null_column(r: Reader) -> AddNotNullColumn | None:
    table, column, ctype = r.table(), r.ident("column"), r.sqltype()
    backfill = r.expr("backfill", what="backfill expression")
    default = _default(r)
    if table and column and ctype and backfill:
        return AddNotNullColumn(table, column, ctype, backfill, default)
    return None


# Every operation's reader, keyed by the operation's class (its NAME is the spec's key).
READ: Mapping[type[Operation], Callable[[Reader], Operation | None]] = {
    CreateTable: _read_create_table,
    AddColumn: _read_add_column,
    CreateIndex: _read_create_index,
    DropIndex: _read_drop_index,
    AddCheck: _read_add_check,
    AddForeignKey: _read_add_foreign_key,
    AddUnique: _read_add_unique,
    SetNotNull: _read_set_not_null,
    SetDefault: alter.read_set_default,
    DropDefault: alter.read_drop_default,
    DropNotNull: alter.read_drop_not_null,
    SetComment: alter.read_set_comment,
    RenameIndex: alter.read_rename_index,
    RenameConstraint: alter.read_rename_constraint,
    SetReplicaIdentity: alter.read_set_replica_identity,
    AddPrimaryKey: alter.read_add_primary_key,
    RenameTable: alter.read_rename_table,
    Backfill: _read_backfill,
    DropColumn: _read_drop_column,
    DropConstraint: _read_drop_constraint,
    DropTable: _read_drop_table,
    RawSql: _read_raw_sql,
    RenameColumn: _read_rename_column,
    ChangeType: _read_change_type,
    ChangeKeyType: _read_change_key_type,
    AddNotNullColumn: _read_add_not_null_column,
}
_unread = set(get_args(Operation)) ^ set(READ)
if _unread:  # an operation without a reader (or a reader without an operation) fails at import
    raise TypeError(f"operations and readers differ: {sorted(c.__name__ for c in _unread)}")
READERS: Mapping[str, Callable[[Reader], Operation | None]] = {cls.NAME: fn for cls, fn in READ.items()}


def read_operations(top: Reader, problems: list[Problem]) -> list[Operation]:
    """Read ``operations``: a list of single-key maps whose key names the operation."""
    raw = top.raw("operations", True)
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw:
        top.problem("operations", "expected a non-empty list of operations")
        return []
    out: list[Operation] = []
    for i, item in enumerate(raw):
        path = f"operations[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            problems.append(Problem(path, "expected a map with one key, the operation's name"))
            continue
        ((name, body),) = item.items()
        reader_fn = READERS.get(name)
        if reader_fn is None:
            known = ", ".join(sorted(READERS))
            problems.append(Problem(path, f"{str(name)[:40]!r} is not an operation (known: {known})"))
            continue
        r = Reader(body, f"{path}.{name}", problems)
        op = reader_fn(r) if r.ok else None
        r.finish()
        if op is not None:
            out.append(op)
    crosschecks.check_names_unique(out, problems)
    crosschecks.check_renamed_tables(out, problems)
    crosschecks.check_key_of_renamed_table(out, problems)
    crosschecks.check_keys_referenced_after_swap(out, problems)
    return out

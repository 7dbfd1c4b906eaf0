"""The checks of single operations against the replayed catalog (see :mod:`.catalog_state`): each
records problems by field path; :mod:`.catalog` picks the check for each operation."""

from __future__ import annotations

from zdm_runbook.core.errors import Problem
from zdm_runbook.spec.catalog_state import CatalogState, check_expr, check_new_column, need_columns
from zdm_runbook.spec.key_dependents import check_key_dependents
from zdm_runbook.spec.keys import key_facts, key_type_problem, no_walk_key, walk_key
from zdm_runbook.spec.model import Phase, Table
from zdm_runbook.spec.operations import (
    AddColumn,
    AddForeignKey,
    AddNotNullColumn,
    AddPrimaryKey,
    AddUnique,
    Backfill,
    ChangeKeyType,
    ChangeType,
    DropDefault,
    DropNotNull,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RenameTable,
    SetComment,
    SetDefault,
    SetReplicaIdentity,
)
from zdm_runbook.spec.replaced_columns import check_new_default, check_renamed_column
from zdm_runbook.spec.sqltext import SqlType


def check_default(
    state: CatalogState,
    cols: dict[str, str],
    op: SetDefault | DropDefault,
    path: str,
    problems: list[Problem],
) -> None:
    if not need_columns(cols, op.table, (op.column,), f"{path}.column", problems):
        return
    if isinstance(op, SetDefault):
        check_expr(state, cols, op.table, op.default, f"{path}.default", problems, SqlType(cols[op.column]))
    elif op.phase != Phase.CONTRACT and state.not_null(op.table, op.column):
        problems.append(
            Problem(
                f"{path}.phase",
                f"{op.table}.{op.column} is NOT NULL: the old app's INSERTs that leave it out rely on"
                f" its default, so it is dropped in contract, not {op.phase.value}",
            )
        )


def check_backfill(
    state: CatalogState, cols: dict[str, str], op: Backfill, path: str, problems: list[Problem]
) -> None:
    for col, expr in op.assignments:
        if need_columns(cols, op.table, (col,), f"{path}.set.{col}", problems):
            check_expr(state, cols, op.table, expr, f"{path}.set.{col}", problems, SqlType(cols[col]))
    check_expr(state, cols, op.table, op.where, f"{path}.where", problems)


def check_added_column(
    state: CatalogState,
    cols: dict[str, str],
    op: AddColumn | AddNotNullColumn,
    path: str,
    problems: list[Problem],
) -> None:
    check_new_column(state, cols, op.table, op.column, op.type, f"{path}.column", problems)
    if op.default is not None:
        check_expr(state, cols, op.table, op.default, f"{path}.default", problems, op.type)
        for fn in state.volatile(op.default):
            problems.append(
                Problem(
                    f"{path}.default",
                    f"{fn}() is VOLATILE on this server: as a DEFAULT it rewrites the table; use a backfill",
                )
            )
    if isinstance(op, AddNotNullColumn):
        check_expr(state, cols, op.table, op.backfill, f"{path}.backfill", problems, op.type)


def check_rename(
    state: CatalogState, cols: dict[str, str], op: RenameColumn, path: str, problems: list[Problem]
) -> None:
    table = op.table
    if op.old not in cols and op.new not in cols:
        problems.append(Problem(f"{path}.from", f"column {op.old} does not exist in {table}"))
        return
    wanted = state.type_name(op.type)
    if op.old in cols and wanted and cols[op.old] != wanted:
        problems.append(
            Problem(
                f"{path}.type",
                f"{table}.{op.old} is {cols[op.old]}, not {wanted}:"
                " a rename keeps the type (use change_type to change it)",
            )
        )
    check_new_column(state, cols, table, op.new, op.type, f"{path}.to", problems)
    if op.old in cols:
        check_renamed_column(state, op, path, problems)


def check_change_type(
    state: CatalogState, cols: dict[str, str], op: ChangeType, path: str, problems: list[Problem]
) -> None:
    table = op.table
    if op.column not in cols and op.new_column not in cols:
        problems.append(Problem(f"{path}.column", f"column {op.column} does not exist in {table}"))
        return
    check_new_column(state, cols, table, op.new_column, op.type, f"{path}.new_column", problems)
    facts = key_facts(state.conn, table, op.column) if op.column in cols else None
    if facts is not None and facts.is_key:
        problems.append(
            Problem(
                f"{path}.column",
                f"{table}.{op.column} is {facts.describe()}: change_type's contract would drop it."
                f" Use change_key_type: {{table: {table}, column: {op.column}, type: {op.type.text}}}",
            )
        )
        return
    if op.column in cols:
        check_expr(state, cols, table, op.using, f"{path}.using", problems, op.type)
        old_type = SqlType(cols[op.column])
        check_expr(state, cols, table, op.reverse, f"{path}.reverse", problems, old_type)
        check_new_default(state, cols, op, path, problems)


def check_change_key_type(
    state: CatalogState, cols: dict[str, str], op: ChangeKeyType, path: str, problems: list[Problem]
) -> None:
    if op.column not in cols:
        problems.append(Problem(f"{path}.column", f"column {op.column} does not exist in {op.table}"))
        return
    facts = key_facts(state.conn, op.table, op.column)
    wanted = state.type_name(op.type) or op.type.text
    why = key_type_problem(facts, wanted) if facts is not None else "could not be read from the catalog"
    if why:
        problems.append(Problem(f"{path}.column", f"{op.table}.{op.column} {why}"))
    elif facts is not None and facts.type != wanted:  # before the swap: the shadow is the new type
        check_new_column(state, cols, op.table, op.new_column, op.type, f"{path}.new_column", problems)
        check_key_dependents(state.conn, op, state.operations, path, problems)
    else:  # swapped: the shadow holds the old key, until contract drops it; a later operation that
        # names it (a twin index, see key_dependents) was for before the swap, and is built by then
        cols.setdefault(op.new_column, "integer")
    if facts is None or facts.holds_only or facts.type == wanted:
        return  # a column that holds a key is widened on a partitioned table too; or swapped already
    if state.relkind(op.table.schema, op.table.name) == "p":
        problems.append(
            Problem(
                f"{path}.table",
                f"{op.table} is partitioned: change_key_type widens a column that holds a key there"
                " (a foreign key column), not a key of its own (a partitioned table's key cannot be"
                " re-created USING INDEX). ALTER COLUMN ... TYPE rewrites every partition under ACCESS"
                " EXCLUSIVE: plan it for a maintenance window",
            )
        )


def check_drop_not_null(
    state: CatalogState, cols: dict[str, str], op: DropNotNull, path: str, problems: list[Problem]
) -> None:
    if not need_columns(cols, op.table, (op.column,), f"{path}.column", problems):
        return
    key = state.primary_key(op.table)
    if key and op.column in key[1]:
        problems.append(
            Problem(f"{path}.column", f"{op.table}.{op.column} is in primary key {key[0]}: it stays NOT NULL")
        )


def check_table_level(
    state: CatalogState,
    cols: dict[str, str],
    op: SetComment | RenameConstraint | SetReplicaIdentity | AddPrimaryKey,
    path: str,
    problems: list[Problem],
) -> None:
    """The operations on one table that name a column, a constraint or an index of it."""
    if isinstance(op, SetComment):
        if op.column is not None:
            need_columns(cols, op.table, (op.column,), f"{path}.column", problems)
    elif isinstance(op, RenameConstraint):
        if not (state.has_constraint(op.table, op.old) or state.has_constraint(op.table, op.new)):
            problems.append(Problem(f"{path}.from", f"constraint {op.old} does not exist on {op.table}"))
    elif isinstance(op, SetReplicaIdentity):
        if op.index is not None and not state.unique_index_on(op.table, op.index):
            problems.append(
                Problem(f"{path}.index", f"{op.index} is not a unique, non-partial index of {op.table}")
            )
    elif need_columns(cols, op.table, op.columns, f"{path}.columns", problems):
        key = state.primary_key(op.table)
        if key and key[0] != op.name:
            problems.append(Problem(f"{path}.name", f"{op.table} already has primary key {key[0]} {key[1]}"))


def check_rename_index(state: CatalogState, op: RenameIndex, path: str, problems: list[Problem]) -> None:
    old, new = state.relkind(op.schema, op.old), state.relkind(op.schema, op.new)
    if old is None and new is None:
        problems.append(Problem(f"{path}.from", f"index {op.schema}.{op.old} does not exist"))
    elif old not in (None, "i", "I"):
        problems.append(Problem(f"{path}.from", f"{op.schema}.{op.old} is not an index"))
    elif old is not None and new is not None:
        problems.append(Problem(f"{path}.to", f"{op.schema}.{op.new} already exists"))


def check_rename_table(state: CatalogState, op: RenameTable, path: str, problems: list[Problem]) -> None:
    """Before expand: a table under the old name, nothing under the new one. After expand: the
    table under the new name and a view under the old one. After contract: the new name only."""
    old, new = op.table, Table(op.table.schema, op.new)
    was, now = state.relkind(old.schema, old.name), state.relkind(new.schema, new.name)
    if state.server_major() < 15:
        problems.append(
            Problem(
                path,
                "rename_table needs PostgreSQL 15 or later: the view under the old name runs"
                " with its caller's rights (security_invoker)",
            )
        )
    elif was in ("r", "p") and now is None:
        state.tables[new] = state.columns(old)
        state.tables[old] = None
    elif was in (None, "v") and now in ("r", "p"):
        pass  # expanded already (or contracted)
    elif was is None:
        problems.append(Problem(f"{path}.from", f"table {old} does not exist"))
    elif now is not None:
        problems.append(Problem(f"{path}.to", f"{new} already exists"))
    else:
        problems.append(Problem(f"{path}.from", f"{old} is not a table"))


def check_partitioned(
    state: CatalogState,
    op: AddUnique | AddPrimaryKey | AddForeignKey,
    path: str,
    problems: list[Problem],
) -> None:
    """What PostgreSQL cannot do on a partitioned table the zero-downtime way (measured on 15 and
    18): a constraint USING INDEX, and before 18 a NOT VALID foreign key. Refused before anything
    runs, never half-applied. (A partitioned table's own key, for change_key_type: see
    :func:`check_change_key_type`.)"""
    if state.relkind(op.table.schema, op.table.name) != "p":
        return
    if isinstance(op, AddForeignKey):
        if state.server_major() < 18:
            problems.append(
                Problem(
                    f"{path}.table",
                    f"{op.table} is partitioned: PostgreSQL before 18 cannot add a foreign key to it"
                    " NOT VALID, and a validated one scans every partition under the lock. Add it to"
                    " each partition instead, or upgrade to 18",
                )
            )
        return
    problems.append(
        Problem(
            f"{path}.table",
            f"{op.table} is partitioned: PostgreSQL cannot add a constraint USING INDEX to a"
            f" partitioned table, which {op.NAME} needs to avoid a long lock. Build the unique index"
            " with create_index (ON ONLY, each partition CONCURRENTLY, ATTACH) and add the constraint"
            " to each partition",
        )
    )


def check_walk_key(state: CatalogState, table: Table, path: str, problems: list[Problem]) -> None:
    """A backfill walks its table in key ranges: a table with no key to walk is refused here, before
    expand adds anything, not at migrate, where the backfill would meet it. A key the spec itself
    adds first (``add_primary_key``, ``add_unique``) counts; so does a table the spec creates."""
    if state.relkind(table.schema, table.name) not in ("r", "p"):
        return  # created (or renamed to) by the spec: its own columns say what it is
    if any(isinstance(o, AddPrimaryKey | AddUnique) and o.table == table for o in state.operations):
        return
    if walk_key(state.conn, table) is None:
        problems.append(Problem(f"{path}.table", no_walk_key(table)))

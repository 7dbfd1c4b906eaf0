"""What ``rename_column`` and ``change_type`` must carry from the column their contract drops.

Both add a new column, keep it in sync, and drop the old one in contract. What the drop would take
along is checked here, before anything runs:

- a generated column: the new column would not have its expression;
- a key (a primary key, a column other tables reference, or one fed by a sequence or an
  identity): the drop would take the key, or leave the new column unfed. ``change_type`` already
  sends such a column to ``change_key_type``; a rename is refused the same way;
- the old column's default: contract gives it to the new column (:mod:`zdm_runbook.plan.column_defaults`),
  as written for a rename and cast to the new type for ``change_type`` when ``using`` is the old
  column cast; a ``using`` that computes (``cents / 100.0``) cannot say what the default becomes,
  so the spec says it (``default:``). Measured: without it the new app's INSERT that leaves the
  column out met a NOT NULL violation right after contract.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.core.errors import Problem
from zdm_runbook.spec.catalog_state import CatalogState, CheckFailed, check_expr
from zdm_runbook.spec.keys import key_facts
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.operations import ChangeType, Operation, RenameColumn
from zdm_runbook.spec.sqltext import SqlTextError, parse_expression, regclass

Q = sql.SQL


def replaced_columns(operations: tuple[Operation, ...]) -> list[tuple[Table, str, str]]:
    """(table, old column, new column) of each operation whose contract drops a column it replaced."""
    found = []
    for op in operations:
        if isinstance(op, RenameColumn):
            found.append((op.table, op.old, op.new))
        elif isinstance(op, ChangeType):
            found.append((op.table, op.column, op.new_column))
    return found


def _expression(state: CatalogState, table: Table, column: str) -> tuple[str, bool] | None:
    """The column's default or generation expression as PostgreSQL writes it, and whether it is
    generated (None: it has neither)."""
    row = state.conn.execute(
        Q(
            "SELECT pg_get_expr(ad.adbin, ad.adrelid), a.attgenerated <> '' FROM pg_attrdef ad"
            " JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum"
            " WHERE ad.adrelid = {} AND a.attname = {}"
        ).format(regclass(table.schema, table.name), sql.Literal(column))
    ).fetchone()
    return None if row is None else (str(row[0]), bool(row[1]))


def _generated(
    found: tuple[str, bool] | None, table: Table, column: str, path: str, problems: list[Problem]
) -> bool:
    """A generated column cannot move to a new column: the new one would be a plain column that the
    new app's INSERTs leave NULL once contract drops the old one and its expression."""
    if found is None or not found[1]:
        return False
    problems.append(
        Problem(
            path,
            f"{table}.{column} is generated ({found[0]}): its values come from that expression,"
            " which a new column would not have. Add the new column with add_column and its own"
            " GENERATED expression instead, and drop this one in a later change",
        )
    )
    return True


def check_renamed_column(state: CatalogState, op: RenameColumn, path: str, problems: list[Problem]) -> None:
    """Neither a generated column nor a key can be renamed through a new column: the new one would
    lack the expression, and contract would drop the key."""
    _generated(_expression(state, op.table, op.old), op.table, op.old, f"{path}.from", problems)
    facts = key_facts(state.conn, op.table, op.old)
    if facts is not None and facts.is_key:
        problems.append(
            Problem(
                f"{path}.from",
                f"{op.table}.{op.old} is {facts.describe()}: rename_column's contract drops the old"
                " column, and the key or what feeds it with it. Keep the name, or rename it in place"
                " (ALTER TABLE ... RENAME COLUMN is catalog-only) once no app names the old one",
            )
        )


def check_new_default(
    state: CatalogState, cols: dict[str, str], op: ChangeType, path: str, problems: list[Problem]
) -> None:
    """The default contract gives ``change_type``'s new column: the spec's, valid in the new type,
    or the old column's, when a cast is all ``using`` does and the old default casts."""
    found = _expression(state, op.table, op.column)
    if _generated(found, op.table, op.column, f"{path}.column", problems):
        return
    if op.default is not None:
        check_expr(state, cols, op.table, op.default, f"{path}.default", problems, op.type)
        return
    if found is None:
        return
    old = found[0]
    if op.using.plain_column() != op.column:
        problems.append(
            Problem(
                f"{path}.default",
                f"{op.table}.{op.column} has DEFAULT {old}, and using ({op.using.text}) computes the"
                f" new value, so the new default cannot be derived: contract would leave"
                f" {op.new_column} without one, and the new app's INSERTs that leave it out would"
                f' write NULL. Give change_type the new column\'s default: default: "..."',
            )
        )
        return
    try:
        state.try_expr(op.table, parse_expression(old), op.type)
    except (CheckFailed, SqlTextError) as exc:
        problems.append(
            Problem(
                f"{path}.default",
                f"{op.table}.{op.column}'s DEFAULT {old} does not cast to {op.type.text} ({exc}):"
                ' give change_type the new column\'s default: default: "..."',
            )
        )

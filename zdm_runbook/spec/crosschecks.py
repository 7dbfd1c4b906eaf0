"""Checks that span a spec's operations: two creating one name, an operation naming a table that
another renames (a key's type change on it), a foreign key to a key that a later operation widens."""

from __future__ import annotations

from zdm_runbook.core.errors import Problem
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.operations import AddForeignKey, ChangeKeyType, Operation, RenameTable, created_names


def check_names_unique(ops: list[Operation], problems: list[Problem]) -> None:
    """Two operations creating the same index, constraint or column would collide."""
    seen: dict[tuple[str, ...], int] = {}
    for i, op in enumerate(ops):
        for key in created_names(op):
            if key in seen:
                problems.append(
                    Problem(
                        f"operations[{i}].{op.NAME}",
                        f"{key[-1]} is also created by operations[{seen[key]}]",
                    )
                )
            seen.setdefault(key, i)


def check_renamed_tables(ops: list[Operation], problems: list[Problem]) -> None:
    """After rename_table's expand its old name is a view: any other operation must name the new
    one (and, so that the catalog check can follow, come after the rename in the spec)."""
    renamed = {
        (op.table.schema, op.table.name): (i, op.new)
        for i, op in enumerate(ops)
        if isinstance(op, RenameTable)
    }
    for i, op in enumerate(ops):
        table = getattr(op, "table", None)
        if isinstance(op, RenameTable | ChangeKeyType) or not isinstance(table, Table):
            continue  # a key's change on a renamed table: check_key_of_renamed_table
        hit = renamed.get((table.schema, table.name))
        if hit is not None:
            j, new = hit
            problems.append(
                Problem(
                    f"operations[{i}].{op.NAME}.table",
                    f"{table} is renamed to {new} by operations[{j}]: name it {table.schema}.{new},"
                    " after the rename (the old name is a view from expand on)",
                )
            )


def check_key_of_renamed_table(ops: list[Operation], problems: list[Problem]) -> None:
    """change_key_type on a table that rename_table renames in the same change, under either name.

    The view that keeps the old name for the old app reads the key column by its position, not its
    name: after the swap it would go on reading the old int column (NULL past its range), and
    contract could not drop that column while the view uses it. Two changes do it: the key first,
    through contract, then the rename."""
    for j, rename in enumerate(ops):
        if not isinstance(rename, RenameTable):
            continue
        new = Table(rename.table.schema, rename.new)
        for i, op in enumerate(ops):
            if isinstance(op, ChangeKeyType) and op.table in (rename.table, new):
                problems.append(
                    Problem(
                        f"operations[{i}].change_key_type.table",
                        f"{op.table} is renamed by operations[{j}] in this change: after the swap the"
                        f" view that keeps the old name {rename.table} for the old app would still read"
                        f" the old {op.column} column (NULL past its range), and contract could not drop"
                        " that column under the view. Widen the key in a change of its own, through"
                        f" contract, then rename: change_key_type: {{table: {rename.table}, column:"
                        f" {op.column}, type: {op.type.text}}}",
                    )
                )


def check_keys_referenced_after_swap(ops: list[Operation], problems: list[Problem]) -> None:
    """A foreign key to a key that change_key_type widens must come after it in the spec: its
    switch steps then run after the swap, against the bigint key, instead of before it."""
    for i, op in enumerate(ops):
        if not isinstance(op, AddForeignKey):
            continue
        for j, key in enumerate(ops[i + 1 :], start=i + 1):
            if isinstance(key, ChangeKeyType) and key.table == op.ref_table and key.column in op.ref_columns:
                problems.append(
                    Problem(
                        f"operations[{i}].add_foreign_key.references",
                        f"references {key.table}.{key.column}, which operations[{j}] widens by"
                        " change_key_type: put it after that operation, so it is added after the swap",
                    )
                )

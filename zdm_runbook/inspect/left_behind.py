"""What ``rename_column`` and ``change_type`` would leave behind on the column contract drops, and
what would make a ``drop_column`` fail.

Both move a column's values to a new column; contract drops the old one. An index, a constraint
or a statistics object on the old column goes with it, silently, and nothing takes its place on
the new one; a view, a policy, a trigger, a rule, a generated column or an SQL-standard function
that uses it makes the drop fail (:mod:`zdm_runbook.spec.column_uses` has the measurements).
Said from the first phase on (``zdm plan --dsn-env`` and every phase's preflight), as a warning:
the spec may re-create an index in a later change, and a view can only move to the new column once
it exists. An index
or a constraint the spec drops by name, or re-creates on the new column (a ``create_index``,
``add_check``, ``add_unique`` or ``add_foreign_key`` that uses it), is not warned of. The column's
own one-column foreign key has its own warning, with the line that keeps it
(:mod:`.key_holders`). Contract's preflight makes a drop that would fail a no-go
(:func:`zdm_runbook.inspect.preflight.drops_report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import psycopg

from zdm_runbook.inspect.backfill_fanout import fanout_warnings
from zdm_runbook.inspect.key_holders import hold_warnings
from zdm_runbook.inspect.preflight import Reason
from zdm_runbook.inspect.publications import published_ddl
from zdm_runbook.inspect.row_security import hidden_rows
from zdm_runbook.inspect.sync_order import later_triggers
from zdm_runbook.plan.steps import BackfillSpec
from zdm_runbook.spec.column_uses import Use, column_uses
from zdm_runbook.spec.model import Phase, Table
from zdm_runbook.spec.operations import (
    AddCheck,
    AddForeignKey,
    AddUnique,
    CreateIndex,
    DropColumn,
    DropConstraint,
    DropIndex,
    Operation,
)
from zdm_runbook.spec.replaced_columns import replaced_columns
from zdm_runbook.spec.sqltext import regclass


def _uses_column(op: Operation, table: Table, column: str) -> bool:
    """Whether ``op`` creates, on ``table``, an index or a constraint that uses ``column``."""
    if getattr(op, "table", None) != table:
        return False
    if isinstance(op, CreateIndex):
        exprs = (op.expression, op.where)
        return column in (op.columns or ()) or any(e is not None and column in e.columns for e in exprs)
    if isinstance(op, AddCheck):
        return column in op.expression.columns
    return isinstance(op, AddUnique | AddForeignKey) and column in op.columns


def _taken_care_of(use: Use, table: Table, new: str, operations: tuple[Operation, ...]) -> bool:
    """The spec drops the index or constraint by name, or creates its kind on the new column."""
    if use.kind == "index":
        dropped = {(op.schema, op.name) for op in operations if isinstance(op, DropIndex)}
    else:
        dropped = {
            (op.table.schema, op.name)
            for op in operations
            if isinstance(op, DropConstraint) and op.table == table
        }
    if (table.schema, use.name) in dropped:
        return True
    definition = (use.definition or "").upper()
    if use.kind == "index":
        kinds: tuple[type, ...] = (CreateIndex,)
    elif definition.startswith("CHECK"):
        kinds = (AddCheck,)
    elif definition.startswith("UNIQUE"):
        kinds = (AddUnique, CreateIndex)
    elif definition.startswith("FOREIGN KEY"):
        kinds = (AddForeignKey,)
    else:
        return False
    return any(isinstance(op, kinds) and _uses_column(op, table, new) for op in operations)


def left_behind_warnings(
    conn: psycopg.Connection[Any], operations: tuple[Operation, ...]
) -> tuple[list[Reason], pd.DataFrame]:
    """A warning per object on a replaced column that contract would drop with it, or fail on, and
    per object that makes a ``drop_column``'s drop fail (what goes with a column the spec drops is
    the spec's intent); and the table of them, for display."""
    reasons, rows = [], []
    for op in operations:
        if isinstance(op, DropColumn):
            column = f"{op.table}.{op.column}"
            for use in column_uses(conn, regclass(op.table.schema, op.table.name), op.column):
                if use.breaks_drop:
                    rows.append((column, use.what, use.definition or "", "fails"))
                    reasons.append(Reason("warn", _refusing(use.what, column)))
    for table, old, new in replaced_columns(operations):
        for use in column_uses(conn, regclass(table.schema, table.name), old):
            if use.own_foreign_key or (not use.breaks_drop and _taken_care_of(use, table, new, operations)):
                continue
            shown = f"{use.what}: {use.definition}" if use.definition else use.what
            outcome = "fails" if use.breaks_drop else "drops it"
            rows.append((f"{table}.{old}", use.what, use.definition or "", outcome))
            reasons.append(Reason("warn", _advice(use, shown, table, old, new)))
    return reasons, pd.DataFrame(rows, columns=["column", "used by", "definition", "contract"])


def _refusing(what: str, column: str) -> str:
    """A drop_column's warning: what makes its drop fail, and what to do before contract."""
    return (
        f"{what} uses {column}: contract's DROP COLUMN fails while it does. Drop it, or move it off"
        " the column, before contract"
    )


def _advice(use: Use, shown: str, table: Table, old: str, new: str) -> str:
    """What contract does to ``use``, and the line or statement that keeps what the app needs."""
    if use.breaks_drop:
        how = "CREATE OR REPLACE VIEW" if "view " in use.what else f"drop it and create it again on {new}"
        return (
            f"{shown} uses {table}.{old}: contract's DROP COLUMN fails while it does. After switch,"
            f" move it to {new} ({how}), before contract"
        )
    head = f"contract drops {shown} with {table}.{old}, and nothing takes its place on {new}."
    if use.kind == "index":
        return (
            f"{head} Re-create it on {new} in this spec (create_index), or say it goes:"
            f" drop_index: {{name: {use.name}}}"
        )
    if use.kind == "constraint":
        return (
            f"{head} Re-create it on {new} in this spec (add_check, add_unique, add_foreign_key), or say"
            f" it goes: drop_constraint: {{table: {table}, name: {use.name}}}"
        )
    return f"{head} Create it again on {new} after switch"


def change_warnings(
    conn: psycopg.Connection[Any],
    operations: tuple[Operation, ...],
    phase: Phase | None = None,
    backfills: Sequence[BackfillSpec] = (),
    dual_write: str = "trigger",
) -> list[tuple[str, list[Reason], pd.DataFrame]]:
    """The change's own warnings, said from the first phase on (``zdm plan --dsn-env`` and every
    preflight), each with its name and table: a column that holds a key the change widens and stays
    narrower (:mod:`.key_holders`); for the backfills still to run, row-level security that would
    hide rows from them (:mod:`.row_security`: a no-go) and the app's triggers and the publications
    each updated row sets off (:mod:`.backfill_fanout`); and, but in contract, the app's triggers
    that fire after the sync trigger (:mod:`.sync_order`), what the subscribers of a published table
    need first (:mod:`.publications`) and what a replaced column leaves behind (contract's report of
    its drops says that, a no-go where the drop would fail)."""
    narrow, holders = hold_warnings(conn, operations)
    found = [("what holds a key", narrow, holders)]
    if backfills:
        hidden, policies = hidden_rows(conn, backfills)
        found.append(("row-level security on the backfill", hidden, policies))
        fired, fanout = fanout_warnings(conn, backfills)
        found.append(("what the backfill's row updates set off", fired, fanout))
    if phase != Phase.CONTRACT:
        later, triggers = later_triggers(conn, operations, dual_write)
        found.append(("the app's triggers that fire after the sync", later, triggers))
        published, subscribers = published_ddl(conn, operations)
        found.append(("what the subscribers of a published table need", published, subscribers))
        behind, uses = left_behind_warnings(conn, operations)
        found.append(("what a replaced column leaves behind", behind, uses))
    return found

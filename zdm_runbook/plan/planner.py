"""The planner: a change's operations expanded into steps, each in exactly one phase.

:func:`plan_operation` is the one dispatch from an operation to its steps (:mod:`.primitives` for
one-phase changes, :mod:`.recipes` for those that span all four); an operation it does not handle
fails mypy, never a run. Steps are ordered phase by phase, in spec order within a phase.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, assert_never

from psycopg import sql

from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.plan import primitives, recipes, renames
from zdm_runbook.plan import steps as s
from zdm_runbook.plan.steps import Step, StepBuilder
from zdm_runbook.spec.change import Change
from zdm_runbook.spec.model import Phase
from zdm_runbook.spec.operations import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddNotNullColumn,
    AddPrimaryKey,
    AddUnique,
    Backfill,
    ChangeKeyType,
    ChangeType,
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

Q = sql.SQL


@dataclass(frozen=True)
class Plan:
    """All steps of one change, in run order; ``for_phase`` gives one phase's share."""

    change: Change
    steps: tuple[Step, ...]

    def for_phase(self, phase: Phase | str) -> tuple[Step, ...]:
        p = Phase(phase)
        return tuple(step for step in self.steps if step.phase == p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "change": self.change.id,
            "description": self.change.description,
            "dual_write": self.change.dual_write,
            "phases": {
                p.value: [
                    {
                        "key": st.key,
                        "description": st.description,
                        "sql": st.render(),
                        "transaction": st.transactional,
                        "tables": [str(t) for t in st.tables],
                        "kind": "backfill" if st.backfill else "ddl",
                    }
                    for st in self.for_phase(p)
                ]
                for p in Phase
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def plan_operation(change: Change, b: StepBuilder, op: Operation) -> None:
    """Add ``op``'s steps to ``b``: one case per operation, and mypy checks that none is missing."""
    match op:
        case RenameColumn():
            recipes.rename_column(change, b, op)
        case ChangeType():
            recipes.change_type(change, b, op)
        case ChangeKeyType():
            recipes.change_key_type(change, b, op)
        case AddNotNullColumn():
            recipes.add_not_null_column(b, op)
        case RenameTable():
            renames.rename_table(b, op)
        case RenameIndex():
            renames.rename_index(b, op)
        case RenameConstraint():
            renames.rename_constraint(b, op)
        case _:
            _plan_primitive(b, op)


# The operations that map to one kind of schema change (plan/primitives.py).
Primitive = (
    CreateTable
    | AddColumn
    | CreateIndex
    | AddCheck
    | AddForeignKey
    | AddUnique
    | SetNotNull
    | SetDefault
    | DropDefault
    | DropNotNull
    | SetComment
    | SetReplicaIdentity
    | AddPrimaryKey
    | Backfill
    | DropColumn
    | DropConstraint
    | DropIndex
    | DropTable
    | RawSql
)


def _plan_primitive(b: StepBuilder, op: Primitive) -> None:
    match op:
        case CreateTable():
            primitives.create_table(b, op)
        case AddColumn():
            primitives.add_column(b, op)
        case CreateIndex():
            primitives.create_index(b, op)
        case AddCheck() | AddForeignKey():
            primitives.add_constraint(b, op)
        case AddUnique():
            primitives.add_unique(b, op)
        case SetNotNull():
            primitives.set_not_null(b, op)
        case SetDefault():
            primitives.set_default(b, op)
        case DropDefault():
            primitives.drop_default(b, op)
        case DropNotNull():
            primitives.drop_not_null(b, op)
        case SetComment():
            primitives.set_comment(b, op)
        case SetReplicaIdentity():
            primitives.set_replica_identity(b, op)
        case AddPrimaryKey():
            primitives.add_primary_key(b, op)
        case Backfill():
            primitives.backfill(b, op)
        case DropColumn():
            primitives.drop_column(b, op)
        case DropConstraint():
            primitives.drop_constraint(b, op)
        case DropIndex():
            primitives.drop_index(b, op)
        case DropTable():
            primitives.drop_table(b, op)
        case RawSql():
            primitives.raw_sql(b, op)
        case _:
            assert_never(op)


def _dollar_tag_problems(change: Change) -> Iterator[Problem]:
    for i, op in enumerate(change.operations):
        for expr in (getattr(op, "using", None), getattr(op, "reverse", None)):
            if expr is not None and s.DOLLAR_TAG in expr.text:
                yield Problem(f"operations[{i}].{op.NAME}", f"expressions cannot contain {s.DOLLAR_TAG}")


def build_plan(change: Change) -> Plan:
    """Expand every operation into steps and order them phase by phase, spec order within a phase."""
    problems = list(_dollar_tag_problems(change))
    if problems:
        raise SpecError(problems, change.source)
    all_steps: list[Step] = []
    for index, op in enumerate(change.operations):
        b = StepBuilder(index, op.NAME)
        plan_operation(change, b, op)
        all_steps.extend(b.steps)
    ordered = sorted(all_steps, key=lambda st: st.phase.order)  # stable: spec order within a phase
    return Plan(change, tuple(ordered))

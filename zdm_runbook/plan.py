"""The planner: a change's operations expanded into steps, each in exactly one phase.

It enforces the founding design: new columns nullable or with a non-volatile default; NOT NULL
as CHECK NOT VALID → VALIDATE → SET NOT NULL → drop the check; FK and CHECK as NOT VALID then
VALIDATE; UNIQUE through a concurrent unique index; every index built and dropped CONCURRENTLY;
renames and type changes as add-new + dual-write + backfill + switch + drop-old; drops only in
contract. A NOT NULL the old app's INSERTs cannot satisfy (no default) waits for contract.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from . import recipes
from . import steps as s
from .errors import Problem, SpecError
from .operations import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddNotNullColumn,
    AddUnique,
    Backfill,
    ChangeType,
    CreateIndex,
    CreateTable,
    DropColumn,
    DropConstraint,
    DropIndex,
    DropTable,
    RawSql,
    RenameColumn,
    SetNotNull,
)
from .spec import Change, Phase, Table
from .steps import BackfillSpec, Step, StepBuilder

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


def _expand_op(change: Change, b: StepBuilder) -> None:
    op = b.op
    if isinstance(op, CreateTable):
        cols = []
        for c in op.columns:
            col = Q("{} {}").format(sql.Identifier(c.name), c.type.sql)
            if c.not_null:
                col = Q("{} NOT NULL").format(col)
            if c.default is not None:
                col = Q("{} DEFAULT {}").format(col, c.default.sql)
            cols.append(col)
        if op.primary_key:
            cols.append(Q("PRIMARY KEY ({})").format(s.identifiers(op.primary_key)))
        stmt = Q("CREATE TABLE IF NOT EXISTS {} ({})").format(s.qname(op.table), Q(", ").join(cols))
        b.add(
            "create",
            Phase.EXPAND,
            f"create table {op.table}",
            stmt,
            s.relation_exists(op.table.schema, op.table.name),
            (op.table,),
        )
    elif isinstance(op, AddColumn):
        b.add(
            "add-column",
            Phase.EXPAND,
            f"add {'nullable ' if op.default is None else ''}{op.table}.{op.column}"
            f"{' with a non-volatile default (catalog only)' if op.default else ''}",
            s.add_column(op.table, op.column, op.type.sql, op.default),
            s.column_exists(op.table, op.column),
            (op.table,),
        )
    elif isinstance(op, CreateIndex):
        keys = s.identifiers(op.columns) if op.columns else Q("({})").format(op.expression.sql)  # type: ignore[union-attr]
        b.add(
            "create",
            Phase.EXPAND,
            f"build {'unique ' if op.unique else ''}index {op.name} on {op.table} CONCURRENTLY",
            s.create_index_concurrently(
                op.table, op.name, keys, unique=op.unique, method=op.method, where=op.where
            ),
            s.index_valid(op.table.schema, op.name),
            (op.table,),
            transactional=False,
            builds_index=(op.table.schema, op.name),
            long_running=True,
        )
    elif isinstance(op, AddCheck | AddForeignKey):
        if isinstance(op, AddCheck):
            body = Q("CHECK ({})").format(op.expression.sql)
            tables: tuple[Table, ...] = (op.table,)
        else:
            body = Q("FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {}").format(
                s.identifiers(op.columns),
                s.qname(op.ref_table),
                s.identifiers(op.ref_columns),
                s.FK_ACTIONS[op.on_delete],
            )
            tables = (op.table, op.ref_table)
        kind = "CHECK" if isinstance(op, AddCheck) else "FOREIGN KEY"
        b.add(
            "add-not-valid",
            Phase.SWITCH,
            f"add {kind} {op.name} NOT VALID (no scan)",
            Q("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                s.qname(op.table), sql.Identifier(op.name), body
            ),
            s.constraint_exists(op.table, op.name),
            tables,
        )
        b.add(
            "validate",
            Phase.SWITCH,
            f"VALIDATE {op.name} (existing rows, weaker lock)",
            s.validate_constraint(op.table, op.name),
            s.constraint_exists(op.table, op.name, validated=True),
            tables,
            long_running=True,
        )
    elif isinstance(op, AddUnique):
        b.add(
            "index",
            Phase.SWITCH,
            f"build unique index {op.name} CONCURRENTLY",
            s.create_index_concurrently(op.table, op.name, s.identifiers(op.columns), unique=True),
            Q("SELECT ({}) OR ({})").format(
                s.index_valid(op.table.schema, op.name), s.constraint_exists(op.table, op.name)
            ),
            (op.table,),
            transactional=False,
            builds_index=(op.table.schema, op.name),
            long_running=True,
        )
        b.add(
            "constraint",
            Phase.SWITCH,
            f"add UNIQUE {op.name} USING INDEX (catalog only)",
            Q("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE USING INDEX {}").format(
                s.qname(op.table), sql.Identifier(op.name), sql.Identifier(op.name)
            ),
            s.constraint_exists(op.table, op.name),
            (op.table,),
        )
    elif isinstance(op, SetNotNull):
        recipes.not_null_steps(b, Phase.SWITCH, op.table, op.column)
    elif isinstance(op, Backfill):
        pending = Q(" OR ").join(
            Q("{} IS DISTINCT FROM ({})").format(sql.Identifier(col), e.sql) for col, e in op.assignments
        )
        fill = BackfillSpec(op.table, tuple((c, e.sql) for c, e in op.assignments), pending, op.where)
        targets = ", ".join(c for c, _ in op.assignments)
        b.add_backfill(f"backfill {op.table} ({targets}) in batches", fill)
    elif isinstance(op, DropColumn):
        b.add(
            "drop",
            Phase.CONTRACT,
            f"drop column {op.table}.{op.column}",
            s.drop_column(op.table, op.column),
            s.column_absent(op.table, op.column),
            (op.table,),
        )
    elif isinstance(op, DropConstraint):
        b.add(
            "drop",
            Phase.CONTRACT,
            f"drop constraint {op.name} on {op.table}",
            s.drop_constraint(op.table, op.name),
            s.constraint_absent(op.table, op.name),
            (op.table,),
        )
    elif isinstance(op, DropIndex):
        b.add(
            "drop",
            Phase.CONTRACT,
            f"drop index {op.schema}.{op.name} CONCURRENTLY",
            s.drop_index_concurrently(op.schema, op.name),
            s.relation_absent(op.schema, op.name),
            transactional=False,
        )
    elif isinstance(op, DropTable):
        b.add(
            "drop",
            Phase.CONTRACT,
            f"drop table {op.table}",
            Q("DROP TABLE IF EXISTS {}").format(s.qname(op.table)),
            s.relation_absent(op.table.schema, op.table.name),
            (op.table,),
        )
    elif isinstance(op, RawSql):
        b.add(
            "sql",
            op.phase,
            f"{op.description} (raw SQL: {op.reason})",
            tuple(st.sql for st in op.statements),
            None,
            transactional=not any(st.concurrent for st in op.statements),
            long_running=any(st.concurrent for st in op.statements),
        )
    elif isinstance(op, RenameColumn | ChangeType | AddNotNullColumn):
        recipes.plan_recipe(change, b)


def _dollar_tag_problems(change: Change) -> Iterator[Problem]:
    for i, op in enumerate(change.operations):
        for expr in (getattr(op, "using", None), getattr(op, "reverse", None)):
            if expr is not None and s.DOLLAR_TAG in expr.text:
                yield Problem(f"operations[{i}].{op.NAME}", f"expressions cannot contain {s.DOLLAR_TAG}")


def build_plan(change: Change, expand: Callable[[Change, StepBuilder], None] = _expand_op) -> Plan:
    """Expand every operation into steps and order them phase by phase, spec order within a phase."""
    problems = list(_dollar_tag_problems(change))
    if problems:
        raise SpecError(problems, change.source)
    all_steps: list[Step] = []
    for index, op in enumerate(change.operations):
        b = StepBuilder(index, op)
        expand(change, b)
        all_steps.extend(b.steps)
    ordered = sorted(all_steps, key=lambda st: st.phase.order)  # stable: spec order within a phase
    return Plan(change, tuple(ordered))

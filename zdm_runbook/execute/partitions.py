"""An index on a partitioned table, built without blocking writes: PostgreSQL cannot build one
CONCURRENTLY on the parent (SQLSTATE 0A000), so the parent gets its index ``ON ONLY`` (invalid,
nothing built), each partition its own ``CONCURRENTLY``, attached one by one; a partition that is
itself partitioned gets the same treatment below it. The parent's index turns valid when the last
partition attaches.

The partitions are read when the step runs, so one attached or detached between phases is simply
part of the tree then. Each piece is a step of its own (keyed ``<step>:<partition>``), guarded,
retried and recorded like any other, and idempotent: a re-run skips what is built and attached.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from zdm_runbook.core.errors import ZdmError
from zdm_runbook.plan import steps as s
from zdm_runbook.plan.steps import IndexSpec, Step
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.sqltext import regclass

Q = sql.SQL
Conn = psycopg.Connection[Any]


def _children(conn: Conn, table: Table) -> list[tuple[Table, str]]:
    """The table's direct partitions and their kind (``r`` table, ``p`` partitioned, ``f`` foreign)."""
    rows = conn.execute(
        Q(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE i.inhparent = {} ORDER BY n.nspname, c.relname"
        ).format(regclass(table.schema, table.name))
    ).fetchall()
    return [(Table(str(schema), str(name)), str(kind)) for schema, name, kind in rows]


def is_partitioned(conn: Conn, table: Table) -> bool:
    row = conn.execute(
        Q("SELECT relkind = 'p' FROM pg_class WHERE oid = {}").format(regclass(table.schema, table.name))
    ).fetchone()
    return bool(row and row[0])


def _attached_on(parent_index: Table, partition: Table) -> sql.Composed:
    """True when the parent index has an index of ``partition`` attached (ours or an older one)."""
    return Q(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid"
        " WHERE i.inhparent = {} AND x.indrelid = {})"
    ).format(regclass(parent_index.schema, parent_index.name), regclass(partition.schema, partition.name))


def partition_steps(conn: Conn, step: Step) -> list[Step] | None:
    """The steps that build ``step``'s index on its partitioned table, in order; None when the
    table is not partitioned (the step's own CONCURRENTLY statement does it)."""
    spec = step.index
    if spec is None or not is_partitioned(conn, spec.table):
        return None
    out: list[Step] = []
    _tree(conn, step, spec, spec.table, spec.name, out)
    return out


def _tree(conn: Conn, step: Step, spec: IndexSpec, table: Table, name: str, out: list[Step]) -> None:
    """Steps for ``table`` (partitioned) and everything below it: ON ONLY, then each child."""
    base = replace(step, index=None, builds_index=None, superseded_when=None, locks=None)
    out.append(
        replace(
            base,
            key=f"{step.key}:{table.name}",
            description=f"index {name} ON ONLY {table} (invalid until every partition attaches)",
            statements=(spec.on_only(table, name),),
            done_when=s.relation_exists(table.schema, name),
            tables=(table,),
            transactional=True,
            long_running=False,
        )
    )
    parent_index = Table(table.schema, name)
    for child, kind in _children(conn, table):
        child_name = s.derived_name(child.name, spec.name, suffix="part")
        attached = _attached_on(parent_index, child)
        if kind == "p":
            _tree(conn, step, spec, child, child_name, out)
        elif kind == "r":
            out.append(
                replace(
                    base,
                    key=f"{step.key}:{child.name}",
                    description=f"index {child_name} on partition {child} CONCURRENTLY",
                    statements=(spec.on(child, child_name),),
                    done_when=Q("SELECT ({}) OR ({})").format(
                        attached, s.index_valid(child.schema, child_name)
                    ),
                    tables=(child,),
                    transactional=False,
                    long_running=True,
                    builds_index=(child.schema, child_name),
                )
            )
        else:
            raise ZdmError(
                f"{child} is a foreign table partition of {table}: PostgreSQL cannot index it; build"
                f" {spec.name} without it (raw_sql) or detach it first"
            )
        out.append(
            replace(
                base,
                key=f"{step.key}:{child.name}:attach",
                description=f"attach {child_name} to {name} (catalog only)",
                statements=(
                    Q("ALTER INDEX {} ATTACH PARTITION {}").format(
                        sql.Identifier(table.schema, name), sql.Identifier(child.schema, child_name)
                    ),
                ),
                done_when=attached,
                tables=(table, child),
                transactional=True,
                long_running=False,
            )
        )

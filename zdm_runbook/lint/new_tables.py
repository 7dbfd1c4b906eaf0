"""The tables a SQL file created, and which of them it filled.

A table the file created is nobody else's yet: its locks queue no app, and a check on it reads only
the rows the file itself put there. ORMs write exactly that for every new model: Django's
``CREATE TABLE`` then ``ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY … DEFERRABLE INITIALLY
DEFERRED``, Prisma's join table then its ``ADD CONSTRAINT … FOREIGN KEY``. Measured on 15 and 18
(the lint corpus): on such a table, empty, the foreign key's check read nothing; filled by the file
(``INSERT … SELECT``, ``CREATE TABLE … AS``), it read the referenced table under
ShareRowExclusiveLock, which blocks that table's writes for as long as it reads. So the foreign
key's rules ask which of the two it is. A catalog-mode shadow copy has no rows to copy, so the
filled case stays the rules' (:mod:`zdm_runbook.lint.measured_mode`).

Also what PostgreSQL refuses on a partitioned table or a partition the file created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums.parsenodes import AlterTableType

from zdm_runbook.lint.analysis import Analysis, Effect, relation_name


@dataclass
class NewTables:
    """Tables created (and filled, partitioned, partitions) by the statements walked so far."""

    created: set[str] = field(default_factory=set)
    filled: set[str] = field(default_factory=set)  # created, then given rows by the file
    partitioned: set[str] = field(default_factory=set)
    partitions: set[str] = field(default_factory=set)  # PARTITION OF

    def only_new(self, a: Analysis) -> bool:
        """Every relation the statement locks was created earlier in this file (or by it)."""
        return bool(a.effects) and all(e.relation in self.created for e in a.effects)

    def note(self, node: Any, first: Effect | None) -> None:
        """What ``node`` creates or fills, for the statements after it."""
        rel = getattr(node, "relation", None)
        if isinstance(node, ast.CreateStmt):
            self.created.add(first.relation if first else "")
            if rel is not None and node.partspec is not None:
                self.partitioned.add(str(rel.relname))
            if rel is not None and node.partbound is not None:
                self.partitions.add(str(rel.relname))
        into = getattr(node, "into", None) if isinstance(node, ast.CreateTableAsStmt) else None
        if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
            into = node.intoClause  # SELECT … INTO t: CREATE TABLE AS by another name
        if into is not None and into.rel is not None:
            self.created.add(relation_name(into.rel))
            if not into.skipData:  # WITH NO DATA leaves it empty
                self.filled.add(relation_name(into.rel))
        copied = isinstance(node, ast.CopyStmt) and node.is_from
        if (
            (isinstance(node, ast.InsertStmt) or copied)
            and rel is not None
            and relation_name(rel) in self.created
        ):
            self.filled.add(relation_name(rel))

    def altered(self, node: Any) -> tuple[str, bool] | None:
        """``(table, filled)`` when ``node`` alters a table this file created, else None."""
        if not isinstance(node, ast.AlterTableStmt) or node.relation is None:
            return None
        name = relation_name(node.relation)
        return (name, name in self.filled) if name in self.created else None

    def refuses(self, node: Any) -> str | None:
        """Why PostgreSQL refuses ``node`` on a partitioned table or a partition this file created
        (measured on 15 and 18), else None."""
        rel = getattr(node, "relation", None)
        name = str(rel.relname) if rel is not None else ""
        if (
            isinstance(node, ast.IndexStmt)
            and node.concurrent
            and name in self.partitioned
            and rel
            and rel.inh
        ):
            return f"CREATE INDEX CONCURRENTLY on the partitioned table {name} fails as written"
        subs = (
            {AlterTableType(int(c.subtype or 0)).name for c in node.cmds or ()}
            if isinstance(node, ast.AlterTableStmt)
            else set()
        )
        if name in self.partitioned and subs & {"AT_SetRelOptions", "AT_ResetRelOptions"}:
            return f"storage parameters on the partitioned table {name} fail as written: it has no storage"
        if name in self.partitions and subs & {"AT_AddColumn", "AT_DropColumn", "AT_AlterColumnType"}:
            return f"{name} is a partition: its columns are its parent's, and this fails as written"
        return None

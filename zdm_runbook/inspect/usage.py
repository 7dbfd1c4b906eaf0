"""Evidence from ``pg_stat_statements`` that no app still uses what contract is about to drop.

The contract phase drops old columns, indexes and tables. Where the extension is loaded, the gate
samples the statistics twice, ``window`` seconds apart: a data statement (not DDL, not ours)
naming a dropped column (and its table), index or table whose call count grew in between is an
app still reading or writing the old shape, and the gate refuses. The statements seen, with
their calls, are shown as evidence either way. zdm-runbook's own statements (its backfill,
verification and compat checks) end with :data:`~zdm_runbook.core.connect.STATEMENT_TAG`:
they are counted apart and never held against the gate. pg_stat_statements keeps no per-call time, so
"recent" means "during the window"; the calls since the statistics were reset are shown as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.enums.parsenodes import AlterTableType, ObjectType

from zdm_runbook.core.connect import STATEMENT_TAG, redact
from zdm_runbook.plan.planner import Plan
from zdm_runbook.spec.model import Phase

Conn = psycopg.Connection[Any]
# Data statements only: the contract's own DDL (and other migrations) name the objects too.
_DML = r"^\s*(select|insert|update|delete|with|merge|copy|values|table)\M"


@dataclass(frozen=True)
class Target:
    """Something contract drops: a column of a table, or a table or index by name."""

    kind: str  # "column" | "table" | "index"
    name: str
    table: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.table}.{self.name}" if self.table else f"{self.kind} {self.name}"


def _number(value: Any) -> int:
    """A pglast enum field as an int (pglast types them as optional)."""
    return int(value or 0)


def _last(parts: Any) -> str:
    return str(parts[-1].sval) if isinstance(parts, tuple) else str(parts)


def dropped(plan: Plan) -> list[Target]:
    """The columns, indexes and tables the plan's contract steps drop (parsed, not guessed)."""
    found: dict[Target, None] = {}
    for step in plan.for_phase(Phase.CONTRACT):
        for raw in parse_sql(step.render()):
            node = raw.stmt
            if isinstance(node, ast.AlterTableStmt) and node.relation is not None:
                table = str(node.relation.relname)
                for cmd in node.cmds or ():
                    if AlterTableType(_number(cmd.subtype)) == AlterTableType.AT_DropColumn:
                        found[Target("column", str(cmd.name), table)] = None
            elif isinstance(node, ast.DropStmt):
                kind = ObjectType(_number(node.removeType))
                if kind in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_INDEX):
                    label = "table" if kind == ObjectType.OBJECT_TABLE else "index"
                    for obj in node.objects or ():
                        found[Target(label, _last(obj))] = None
    return list(found)


def available(conn: Conn) -> bool:
    """True when pg_stat_statements is installed in this database and loaded by the server."""
    row = conn.execute("SELECT to_regclass('pg_stat_statements') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return False
    try:
        with conn.transaction():
            conn.execute("SELECT 1 FROM pg_stat_statements LIMIT 1").fetchone()
    except psycopg.Error:  # installed but not in shared_preload_libraries
        return False
    return True


def name_pattern(name: str) -> str:
    """A PostgreSQL regular expression matching ``name`` as a whole identifier in query text.

    Every character that is not a letter or digit is escaped (``$`` is an anchor in a regex), and
    the boundaries are look-arounds on identifier characters: ``\\m``/``\\M`` know only letters,
    digits and ``_``, so they would never match around a ``$`` that ends a name."""
    escaped = "".join(ch if ch.isalnum() else "\\" + ch for ch in name)
    return rf"(?<![[:alnum:]_$]){escaped}(?![[:alnum:]_$])"


def _matches(conn: Conn, targets: list[Target]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for target in targets:
        words = [target.name] + ([target.table] if target.table else [])
        rows = conn.execute(
            "SELECT queryid, calls, query, rtrim(query) LIKE %s FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND query ~* %s AND query !~* %s AND query ~* ALL(%s)",
            ["%" + STATEMENT_TAG.strip(), _DML, r"\mzdm\.", [name_pattern(w) for w in words]],
        ).fetchall()
        for queryid, calls, query, ours in rows:
            entry = found.setdefault(int(queryid), {"query": redact(str(query)), "uses": [], "ours": ours})
            entry["calls"] = int(calls)
            entry["uses"].append(str(target))
    return found


@dataclass
class Usage:
    """What the window saw: every statement naming a dropped object, and the ones that ran in it."""

    targets: list[Target]
    window_s: float
    statements: list[dict[str, Any]]

    @property
    def app(self) -> list[dict[str, Any]]:
        """The statements that are not zdm-runbook's own."""
        return [s for s in self.statements if not s["ours"]]

    @property
    def ours(self) -> int:
        """How many of the statements seen are zdm-runbook's own (not shown, not held against the gate)."""
        return len(self.statements) - len(self.app)

    @property
    def recent(self) -> list[dict[str, Any]]:
        return [s for s in self.app if s["calls_in_window"] > 0]

    def reasons(self) -> list[str]:
        return [
            f"{s['calls_in_window']} call(s) in the last {self.window_s:g} s of a statement using"
            f" {', '.join(s['uses'])}: {s['query'][:160]}"
            for s in self.recent
        ]


def watch(conn: Conn, targets: list[Target], window_s: float) -> Usage:
    """Sample the statements naming ``targets`` twice, ``window_s`` apart (0: once, no verdict)."""
    before = _matches(conn, targets) if targets else {}
    after = before
    if targets and window_s > 0:
        time.sleep(window_s)
        after = _matches(conn, targets)

    def in_window(qid: int, calls: int) -> int:
        if window_s <= 0:
            return 0
        return calls - int(before[qid]["calls"]) if qid in before else calls

    statements = [
        {
            "queryid": qid,
            "query": e["query"],
            "uses": e["uses"],
            "ours": bool(e["ours"]),
            "calls_total": e["calls"],
            "calls_in_window": in_window(qid, e["calls"]),
        }
        for qid, e in after.items()
    ]
    return Usage(targets, window_s, statements)

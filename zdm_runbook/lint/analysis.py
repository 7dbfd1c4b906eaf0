"""What a statement locks and what it does while holding the lock, parsed with pglast.

For every statement: the lock mode taken on each relation (PostgreSQL's own names, as in
``pg_locks``), the work done under it (``catalog`` update only, a ``scan``, a ``rewrite``, an
``index build``, or row ``data`` changes), and whether it may run inside a transaction block.
Version-aware where PostgreSQL changed: a non-volatile ADD COLUMN default is catalog-only from 11.
The claimed modes are checked empirically against ``pg_locks`` on PostgreSQL 18 and 15 by the tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pglast import ast, parse_sql
from pglast.enums.parsenodes import AlterTableType, ConstrType, ObjectType, ReindexObjectType

from zdm_runbook.lint import domains
from zdm_runbook.spec.sqltext import VOLATILE_FUNCTIONS

if TYPE_CHECKING:
    from zdm_runbook.plan.steps import Step

# Weakest to strongest; a mode blocks reads when it conflicts with AccessShareLock, writes when it
# conflicts with RowExclusiveLock (https://www.postgresql.org/docs/current/explicit-locking.html).
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
BLOCKS_READS = frozenset({"AccessExclusiveLock"})
BLOCKS_WRITES = frozenset({"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"})
LOCK_STMT_MODES = dict(enumerate(LOCK_MODES, start=1))  # LOCK TABLE ... IN <mode> (lockdefs.h numbering)

# ALTER TABLE subcommands whose lock is weaker than ACCESS EXCLUSIVE (tablecmds.c).
_AT_LOCKS = {
    "AT_SetStatistics": "ShareUpdateExclusiveLock",
    "AT_SetOptions": "ShareUpdateExclusiveLock",
    "AT_ResetOptions": "ShareUpdateExclusiveLock",
    "AT_ValidateConstraint": "ShareUpdateExclusiveLock",
    "AT_ClusterOn": "ShareUpdateExclusiveLock",
    "AT_DropCluster": "ShareUpdateExclusiveLock",
    "AT_SetRelOptions": "ShareUpdateExclusiveLock",
    "AT_ResetRelOptions": "ShareUpdateExclusiveLock",
    "AT_EnableTrig": "ShareRowExclusiveLock",
    "AT_EnableAlwaysTrig": "ShareRowExclusiveLock",
    "AT_EnableReplicaTrig": "ShareRowExclusiveLock",
    "AT_DisableTrig": "ShareRowExclusiveLock",
    "AT_EnableTrigAll": "ShareRowExclusiveLock",
    "AT_DisableTrigAll": "ShareRowExclusiveLock",
    "AT_EnableTrigUser": "ShareRowExclusiveLock",
    "AT_DisableTrigUser": "ShareRowExclusiveLock",
    "AT_AttachPartition": "ShareUpdateExclusiveLock",
}
# What each subcommand does while the lock is held, when it is more than a catalog update.
_AT_WORK = {
    "AT_SetNotNull": "scan",
    "AT_AlterColumnType": "rewrite",
    "AT_SetTableSpace": "rewrite",
    "AT_SetLogged": "rewrite",
    "AT_SetUnLogged": "rewrite",
    "AT_ValidateConstraint": "scan",
    "AT_AttachPartition": "scan",
    "AT_SetAccessMethod": "rewrite",
    "AT_SetExpression": "rewrite",  # a STORED column's (measured on 18); a VIRTUAL one's is catalog only
}


@dataclass(frozen=True)
class Effect:
    """One relation's lock and the work done while it is held."""

    relation: str
    lock: str
    work: str = "catalog"

    @property
    def blocks_reads(self) -> bool:
        return self.lock in BLOCKS_READS

    @property
    def blocks_writes(self) -> bool:
        return self.lock in BLOCKS_WRITES


@dataclass(frozen=True)
class Analysis:
    """One statement: where it is, what it is, what it locks, and whether a transaction may hold it."""

    index: int
    line: int
    text: str
    kind: str
    effects: tuple[Effect, ...]
    in_transaction_ok: bool = True
    destructive: bool = False  # removes or changes what the old app uses
    phase: str | None = None  # where it belongs in expand/migrate/switch/contract (None: nowhere in place)
    maybe_domains: tuple[str, ...] = ()  # added columns' types that may be domains with constraints

    @property
    def strongest(self) -> str | None:
        modes = [e.lock for e in self.effects]
        return max(modes, key=LOCK_MODES.index) if modes else None


def relation_name(rv: Any) -> str:
    """A relation as the file writes it: ``schema.table`` when qualified, else ``table``."""
    return f"{rv.schemaname}.{rv.relname}" if getattr(rv, "schemaname", None) else str(rv.relname)


def _int(value: Any) -> int:
    """A pglast enum field as an int (pglast types them as optional)."""
    return int(value or 0)


def _stronger(a: str, b: str) -> str:
    return a if LOCK_MODES.index(a) >= LOCK_MODES.index(b) else b


def _volatile_default(col: ast.ColumnDef, version: int) -> bool:
    """Whether adding ``col`` fills every row: a volatile default, or any default before 11,
    or an identity, serial or stored generated column."""
    if (
        col.typeName is not None
        and col.typeName.names
        and str(col.typeName.names[-1].sval)
        in {
            "serial",
            "bigserial",
            "smallserial",
            "serial4",
            "serial8",
            "serial2",
        }
    ):
        return True
    for c in col.constraints or ():
        kind = ConstrType(_int(c.contype))
        if kind in (ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED):
            return kind == ConstrType.CONSTR_IDENTITY or getattr(c, "generated_kind", None) != "v"
        if kind == ConstrType.CONSTR_DEFAULT and c.raw_expr is not None:
            if version < 11:
                return True
            names = {str(f.funcname[-1].sval).lower() for f in _funccalls(c.raw_expr) if f.funcname}
            if names & VOLATILE_FUNCTIONS:
                return True
    return False


def _funccalls(node: Any) -> Iterator[ast.FuncCall]:
    from pglast.visitors import Visitor  # noqa: PLC0415

    found: list[ast.FuncCall] = []

    class _Calls(Visitor):
        def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> None:
            found.append(node)

    _Calls()(node)
    return iter(found)


def _relations(node: Any) -> list[str]:
    """The relations a query names (a view's definition locks each with ACCESS SHARE)."""
    from pglast.visitors import Visitor  # noqa: PLC0415

    found: dict[str, None] = {}

    class _Rels(Visitor):
        def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> None:
            found[relation_name(node)] = None

    _Rels()(node)
    return list(found)


def _constraints(node: ast.CreateStmt) -> list[Any]:
    """A CREATE TABLE's constraints: the table's own and each column's."""
    out = [e for e in node.tableElts or () if isinstance(e, ast.Constraint)]
    for col in node.tableElts or ():
        if isinstance(col, ast.ColumnDef):
            out += [c for c in col.constraints or () if isinstance(c, ast.Constraint)]
    return out


def _alter_table(stmt: ast.AlterTableStmt, version: int) -> list[Effect]:
    table = relation_name(stmt.relation)
    lock, work = "ShareUpdateExclusiveLock", "catalog"
    extra: list[Effect] = []
    for cmd in stmt.cmds or ():
        sub = AlterTableType(_int(cmd.subtype)).name
        mode = _AT_LOCKS.get(sub, "AccessExclusiveLock")
        step_work = _AT_WORK.get(sub, "catalog")
        if sub == "AT_AttachPartition" and version < 12:  # the weaker lock on the parent came in 12
            mode = "AccessExclusiveLock"
        if sub == "AT_DetachPartition" and getattr(cmd.def_, "concurrent", False):  # 14+
            mode = "ShareUpdateExclusiveLock"
        if (
            sub == "AT_AddColumn"
            and isinstance(cmd.def_, ast.ColumnDef)
            and _volatile_default(cmd.def_, version)
        ):
            step_work = "rewrite"
        elif sub == "AT_AddColumn" and isinstance(cmd.def_, ast.ColumnDef):
            inline = {ConstrType(_int(c.contype)) for c in cmd.def_.constraints or ()}
            if inline & {ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY}:
                step_work = "index build"
            elif ConstrType.CONSTR_CHECK in inline:
                step_work = "scan"
            elif {ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_DEFAULT} <= inline:
                step_work = "scan"  # measured: with any DEFAULT, even NULL, the new key is checked row by row
        if sub == "AT_AddColumn" and isinstance(cmd.def_, ast.ColumnDef):
            extra += [
                Effect(relation_name(c.pktable), "ShareRowExclusiveLock")
                for c in cmd.def_.constraints or ()
                if ConstrType(_int(c.contype)) == ConstrType.CONSTR_FOREIGN and c.pktable is not None
            ]
        if sub == "AT_AddConstraint" and isinstance(cmd.def_, ast.Constraint):
            kind = ConstrType(_int(cmd.def_.contype))
            validated = not cmd.def_.skip_validation
            if kind == ConstrType.CONSTR_FOREIGN:
                mode = "ShareRowExclusiveLock"
                step_work = "scan" if validated else "catalog"
                extra.append(Effect(relation_name(cmd.def_.pktable), "ShareRowExclusiveLock", "catalog"))
            elif kind == ConstrType.CONSTR_CHECK:
                step_work = "scan" if validated else "catalog"
            elif kind in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_EXCLUSION):
                step_work = "catalog" if cmd.def_.indexname else "index build"
                if kind == ConstrType.CONSTR_PRIMARY and cmd.def_.indexname:
                    step_work = "scan"  # the NOT NULL the key needs, unless already there
        lock = _stronger(lock, mode)
        work = max(work, step_work, key=["catalog", "scan", "index build", "rewrite"].index)
    return [Effect(table, lock, work), *extra]


def _effects(node: Any, version: int) -> tuple[list[Effect], bool]:
    """The effects of one parsed statement, and whether it may run in a transaction block."""
    if isinstance(node, ast.AlterTableStmt):
        concurrent = any(
            getattr(c.def_, "concurrent", False)
            for c in node.cmds or ()
            if AlterTableType(_int(c.subtype)).name == "AT_DetachPartition"
        )
        return _alter_table(node, version), not concurrent
    if isinstance(node, ast.IndexStmt):
        table = relation_name(node.relation)
        if node.concurrent:
            return [Effect(table, "ShareUpdateExclusiveLock", "index build")], False
        if not getattr(node.relation, "inh", True):  # ON ONLY a partitioned parent: nothing to read
            return [Effect(table, "ShareLock")], True
        return [Effect(table, "ShareLock", "index build")], True
    if isinstance(node, ast.DropStmt):
        kind = ObjectType(_int(node.removeType))
        names = [".".join(str(p.sval) for p in obj) for obj in node.objects or () if isinstance(obj, tuple)]
        if kind == ObjectType.OBJECT_INDEX:
            mode = "ShareUpdateExclusiveLock" if node.concurrent else "AccessExclusiveLock"
            # The index and its table are locked alike; which table needs the catalog.
            return [Effect(n, mode) for n in names], not node.concurrent
        if kind in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW, ObjectType.OBJECT_MATVIEW):
            return [Effect(n, "AccessExclusiveLock") for n in names], True
        if kind in (ObjectType.OBJECT_TRIGGER, ObjectType.OBJECT_POLICY):  # measured: its table, AE
            tables = [
                ".".join(str(p.sval) for p in obj[:-1])
                for obj in node.objects or ()
                if isinstance(obj, tuple)
            ]
            return [Effect(t, "AccessExclusiveLock") for t in tables if t], True
        return [], True
    if isinstance(node, ast.ReindexStmt):
        concurrent = any(p.defname == "concurrently" for p in node.params or ())
        target = relation_name(node.relation) if node.relation else str(node.name)
        if ReindexObjectType(_int(node.kind)) in (
            ReindexObjectType.REINDEX_OBJECT_INDEX,
            ReindexObjectType.REINDEX_OBJECT_TABLE,
        ):
            mode = "ShareUpdateExclusiveLock" if concurrent else "ShareLock"
            return [Effect(target, mode, "index build")], not concurrent
        return [], False
    if isinstance(node, ast.VacuumStmt):
        full = any(o.defname == "full" for o in node.options or ())
        rels = [relation_name(r.relation) for r in node.rels or ()]
        mode, work = ("AccessExclusiveLock", "rewrite") if full else ("ShareUpdateExclusiveLock", "scan")
        if not node.is_vacuumcmd:  # ANALYZE
            mode, work = "ShareUpdateExclusiveLock", "scan"
        return [Effect(r, mode, work) for r in rels], not node.is_vacuumcmd
    if isinstance(node, ast.ClusterStmt):
        return (
            [Effect(relation_name(node.relation), "AccessExclusiveLock", "rewrite")] if node.relation else []
        ), True
    if isinstance(node, ast.TruncateStmt):
        return [
            Effect(relation_name(r), "AccessExclusiveLock", "rewrite") for r in node.relations or ()
        ], True
    if isinstance(node, ast.RenameStmt) and node.relation is not None:
        index = ObjectType(_int(node.renameType)) == ObjectType.OBJECT_INDEX
        # Since 12 an index is renamed under SHARE UPDATE EXCLUSIVE (measured in pg_locks).
        mode = "ShareUpdateExclusiveLock" if index and version >= 12 else "AccessExclusiveLock"
        return [Effect(relation_name(node.relation), mode)], True
    if isinstance(node, ast.CommentStmt):
        kind = ObjectType(_int(node.objtype))
        comment_on: list[str] = [str(n.sval) for n in node.object] if isinstance(node.object, tuple) else []
        commented = comment_on[:-1] if kind == ObjectType.OBJECT_COLUMN else comment_on
        if kind in (ObjectType.OBJECT_COLUMN, ObjectType.OBJECT_TABLE) and commented:
            return [Effect(".".join(commented), "ShareUpdateExclusiveLock")], True
        return [], True
    if isinstance(node, ast.ViewStmt) and node.query is not None:
        return [Effect(name, "AccessShareLock") for name in _relations(node.query)], True
    if isinstance(node, ast.RefreshMatViewStmt) and node.relation is not None:
        mode = "ExclusiveLock" if node.concurrent else "AccessExclusiveLock"
        return [Effect(relation_name(node.relation), mode, "rewrite")], True
    if isinstance(node, ast.CreateTrigStmt):
        return [Effect(relation_name(node.relation), "ShareRowExclusiveLock")], True
    if isinstance(node, ast.CreatePolicyStmt | ast.AlterPolicyStmt) and node.table is not None:
        return [Effect(relation_name(node.table), "AccessExclusiveLock")], True  # measured on 15 and 18
    if isinstance(node, ast.AlterSeqStmt) and node.sequence is not None:
        # Measured on 15 and 18: ShareRowExclusiveLock on the sequence, which waits for every open
        # transaction that called nextval() (it holds RowExclusiveLock to its end), and every
        # nextval(), every INSERT that takes one, queues behind it. A new file for a one-row
        # sequence is no rewrite to speak of.
        return [Effect(relation_name(node.sequence), "ShareRowExclusiveLock")], True
    if isinstance(node, ast.LockStmt):
        mode = LOCK_STMT_MODES.get(_int(node.mode), "AccessExclusiveLock")
        return [Effect(relation_name(r), mode) for r in node.relations or ()], True
    if isinstance(node, ast.UpdateStmt | ast.DeleteStmt | ast.InsertStmt):
        return [Effect(relation_name(node.relation), "RowExclusiveLock", "data")], True
    if isinstance(node, ast.CreateStmt):
        # The new table is nobody else's yet; a table it references gets ShareRowExclusiveLock.
        referenced = [
            Effect(relation_name(c.pktable), "ShareRowExclusiveLock")
            for c in _constraints(node)
            if ConstrType(_int(c.contype)) == ConstrType.CONSTR_FOREIGN and c.pktable is not None
        ]
        return [Effect(relation_name(node.relation), "AccessExclusiveLock"), *referenced], True
    return [], True


def analyze(text: str, version: int = 18, parsed: Sequence[Any] | None = None) -> list[Analysis]:
    """Every statement of ``text``, in order, with its effects (pglast raises on a parse error).

    ``parsed``: pglast's statements of ``text``, when the caller has parsed it already."""
    out = []
    known: dict[str, bool] = {}  # the types the file made so far: a constrained domain or not
    for i, raw in enumerate(parse_sql(text) if parsed is None else parsed):
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        body = text[start:end].strip()
        line = text.count("\n", 0, start + (len(text[start:end]) - len(text[start:end].lstrip()))) + 1
        effects, tx_ok = _effects(raw.stmt, version)
        if domains.adds_constrained_domain(raw.stmt, known):  # lint/domains.py: measured
            effects = [replace(e, work="rewrite") if e is effects[0] else e for e in effects]
        destructive, phase = classify(raw.stmt)
        kind = type(raw.stmt).__name__
        maybe = domains.maybe_domains(raw.stmt, known)
        out.append(Analysis(i, line, body, kind, tuple(effects), tx_ok, destructive, phase, maybe))
        if (made := domains.type_made(raw.stmt)) is not None:
            known[made[0]] = made[1]
    return out


_CONTRACT_SUBS = {"AT_DropColumn", "AT_DropConstraint", "AT_DropNotNull", "AT_DetachPartition"}
_SWITCH_SUBS = {"AT_SetNotNull", "AT_ValidateConstraint", "AT_AddIndexConstraint"}


def classify(node: Any) -> tuple[bool, str | None]:
    """``(destructive, phase)``: whether the statement takes away what the old app uses, and the
    expand-and-contract phase it belongs to (None for an in-place type change: it belongs nowhere)."""
    if isinstance(node, ast.DropStmt | ast.TruncateStmt):
        return True, "contract"
    if isinstance(node, ast.RenameStmt):
        return True, None  # a rename is add-new + dual-write + backfill + drop-old, never in place
    if isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
        return isinstance(node, ast.DeleteStmt), "migrate"
    if isinstance(node, ast.AlterTableStmt):
        subs = {AlterTableType(_int(c.subtype)).name for c in node.cmds or ()}
        if "AT_AlterColumnType" in subs:
            return True, None
        if subs & _CONTRACT_SUBS:
            return True, "contract"
        constraints = [c.def_ for c in node.cmds or () if isinstance(c.def_, ast.Constraint)]
        if subs & _SWITCH_SUBS or any(c.indexname or not c.skip_validation for c in constraints):
            return False, "switch"
        if constraints:
            return False, "switch"
    return False, "expand"


def step_locks(step: Step) -> str:
    """What the step locks and does under the lock, from :mod:`zdm_runbook.lint.analysis`."""
    if step.backfill is not None:
        return "locks: RowExclusiveLock per batch, in short keyset batches (the backfill engine)"
    if step.locks:
        return f"locks: {step.locks}"
    analyses = analyze(step.render())
    if any(a.kind == "DoStmt" for a in analyses):
        return "locks: not known before it runs (a DO block, and the planner says nothing of it)"
    effects = {(e.relation, e.lock, e.work) for a in analyses for e in a.effects}
    if step.key.endswith(
        "-set-not-null"
    ):  # the planner validated a CHECK (c IS NOT NULL) first: 12+ skips the scan
        effects = {(rel, lock, "catalog, proven by the validated check") for rel, lock, _ in effects}
    if not effects:
        return "locks: no table lock"
    return "locks: " + "; ".join(f"{rel} {lock} ({work})" for rel, lock, work in sorted(effects))

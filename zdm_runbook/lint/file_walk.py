"""What a SQL file has done so far, statement by statement: its transaction, the timeouts it set
(and RESET ALL), an AccessExclusiveLock it holds, the tables it created (:mod:`.new_tables`),
the columns it made NOT NULL, the NOT NULL checks it validated, the enum values it added, the tables
it renamed; and the rules that follow from the order (a lock with no ``lock_timeout`` before it,
CONCURRENTLY inside a transaction block, work or a read under a lock held since an earlier
statement, a default dropped from a column the file made NOT NULL, a new enum value used before
its COMMIT, what PostgreSQL refuses on a partitioned table). Each rule's label is measured in the
lint corpus on 15 and 18.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums.parsenodes import (
    AlterTableType,
    ConstrType,
    DiscardMode,
    ObjectType,
    TransactionStmtKind,
    VariableSetKind,
)
from pglast.enums.primnodes import NullTestType

from zdm_runbook.lint.analysis import LOCK_MODES, Analysis, Effect
from zdm_runbook.lint.hazards import Finding, finding
from zdm_runbook.lint.new_tables import NewTables

APP_BLOCKING = LOCK_MODES.index("ShareUpdateExclusiveLock")  # stronger than this queues the app


def setting(node: Any) -> tuple[str, bool, bool] | None:
    """``(name, enabled, local)`` for ``SET [LOCAL] lock_timeout|statement_timeout`` or set_config()."""
    if isinstance(node, ast.VariableSetStmt) and node.name in ("lock_timeout", "statement_timeout"):
        values = [
            getattr(getattr(v, "val", None), "sval", None) or getattr(getattr(v, "val", None), "ival", None)
            for v in node.args or ()
        ]
        enabled = bool(values) and str(values[0]).strip() not in ("0", "0s", "0ms", "None")
        return str(node.name), enabled, bool(node.is_local)
    if isinstance(node, ast.SelectStmt):
        for target in node.targetList or ():
            call = getattr(target, "val", None)
            if isinstance(call, ast.FuncCall) and [str(n.sval) for n in call.funcname or ()][-1:] == [
                "set_config"
            ]:
                args = [getattr(getattr(a, "val", None), "sval", None) for a in call.args or ()]
                if len(args) == 3 and args[0] in ("lock_timeout", "statement_timeout"):
                    local = getattr(getattr(call.args[2], "val", None), "boolval", None)  # type: ignore[index]
                    return str(args[0]), str(args[1]).strip() not in ("0", "0s", "0ms"), bool(local)
    return None


@dataclass
class Walk:
    """What the file has done so far: transaction, timeouts set, a held AccessExclusiveLock, ..."""

    file: str
    in_tx: bool = False
    timeouts: dict[str, bool] = field(default_factory=dict)
    local: dict[str, bool] = field(default_factory=dict)
    held: tuple[int, str] | None = None
    tx_ddl: bool = False
    tx_data: bool = False
    not_valid: set[str] = field(default_factory=set)
    new: NewTables = field(default_factory=NewTables)  # tables this file created: nobody else's yet
    nn_checks: dict[str, tuple[str, str]] = field(default_factory=dict)  # CHECK (col IS NOT NULL)s
    proven: set[tuple[str, str]] = field(default_factory=set)  # (table, column) a validated check proves
    new_labels: dict[str, set[str]] = field(default_factory=dict)  # enum labels added in this transaction
    not_null: set[tuple[str, str]] = field(default_factory=set)  # (table, column) this file made NOT NULL
    renamed: dict[str, int] = field(default_factory=dict)  # tables renamed in this transaction: by whom
    kept: set[int] = field(default_factory=set)  # renames whose old name a view took in the transaction

    def control(self, node: Any) -> bool:
        """Track BEGIN/COMMIT and timeout settings; True when ``node`` was one of those."""
        if isinstance(node, ast.TransactionStmt):
            kind = TransactionStmtKind(int(node.kind or 0))
            chained = bool(getattr(node, "chain", False))  # COMMIT AND CHAIN: a new transaction at once
            if (
                kind in (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START)
                or chained
            ):
                self.in_tx, self.held, self.tx_ddl, self.tx_data = True, None, False, False
                self.not_valid, self.local, self.renamed, self.new_labels = set(), {}, {}, {}
            elif kind in (TransactionStmtKind.TRANS_STMT_COMMIT, TransactionStmtKind.TRANS_STMT_ROLLBACK):
                self.in_tx, self.held, self.local, self.renamed, self.new_labels = False, None, {}, {}, {}
            return True
        everything = isinstance(node, ast.VariableSetStmt) and node.kind == VariableSetKind.VAR_RESET_ALL
        if everything or (isinstance(node, ast.DiscardStmt) and node.target == DiscardMode.DISCARD_ALL):
            self.timeouts, self.local = {}, {}  # RESET ALL, DISCARD ALL: lock_timeout is 0 again (measured)
            return True
        found = setting(node)
        if found:
            name, enabled, is_local = found
            if is_local and not self.in_tx:  # measured: no effect outside a transaction block
                return True
            (self.local if is_local else self.timeouts)[name] = enabled
            return True
        return False

    def rules(self, a: Analysis, node: Any) -> list[Finding]:
        """The file-order rules for one statement, then the state it leaves behind."""
        out: list[Finding] = []
        first = a.effects[0] if a.effects else None
        self.new.note(node, first)
        if (why := self.new.refuses(node)) is not None:
            out.append(finding(a, first, self.file, "fails-on-partitions", "error", why, _PARTITIONS))
        old = [e for e in a.effects if e.relation not in self.new.created]
        strongest = max((e.lock for e in old), key=LOCK_MODES.index) if old else None
        blocking = strongest is not None and LOCK_MODES.index(strongest) > APP_BLOCKING
        has = {**self.timeouts, **self.local}
        nowait = isinstance(node, ast.LockStmt) and bool(node.nowait)
        if blocking and not has.get("lock_timeout") and not nowait:
            out.append(
                finding(
                    a,
                    first,
                    self.file,
                    "missing-lock-timeout",
                    "error",
                    _NO_LOCK_TIMEOUT % strongest,
                    _SET_TIMEOUTS,
                )
            )
        elif blocking and not has.get("statement_timeout"):
            out.append(
                finding(
                    a,
                    first,
                    self.file,
                    "missing-statement-timeout",
                    "warning",
                    _NO_STATEMENT_TIMEOUT,
                    _SET_TIMEOUTS,
                )
            )
        if isinstance(node, ast.LockStmt) and not self.in_tx:
            out.append(
                finding(
                    a,
                    first,
                    self.file,
                    "lock-outside-transaction",
                    "error",
                    "LOCK TABLE outside a transaction block: it fails as written",
                    "BEGIN; LOCK …; the work; COMMIT",
                )
            )
        if self.in_tx and not a.in_transaction_ok:
            out.append(
                finding(
                    a,
                    first,
                    self.file,
                    "concurrently-in-transaction",
                    "error",
                    _IN_TX,
                    "run it alone, outside BEGIN … COMMIT",
                )
            )
        if self.in_tx and self.held and first:
            severity = "error" if any(e.work != "catalog" for e in a.effects) else "warning"
            message = (
                f"runs while the AccessExclusiveLock on {self.held[1]} taken by statement"
                f" {self.held[0]} is held until commit"
            )
            out.append(
                finding(a, first, self.file, "runs-under-held-lock", severity, message, _COMMIT_SOONER)
            )
        elif self.in_tx and self.held and isinstance(node, ast.SelectStmt) and _reads(node, self.held[1]):
            message = (  # measured on 15 and 18: even WHERE id = 1 read all 300 rows of the corpus' table
                f"reads {self.held[1]} while the AccessExclusiveLock taken by statement {self.held[0]} is"
                " held until commit: the app waits for the read too"
            )
            out.append(finding(a, None, self.file, "runs-under-held-lock", "error", message, _COMMIT_SOONER))
        is_data = isinstance(node, ast.UpdateStmt | ast.DeleteStmt)
        if self.in_tx and ((is_data and self.tx_ddl) or (blocking and self.tx_data)):
            out.append(
                finding(a, first, self.file, "data-in-ddl-transaction", "error", _DATA_WITH_DDL, _BATCHED)
            )
        out += self._what_the_file_did(a, node, first)
        if self.in_tx and strongest == "AccessExclusiveLock" and self.held is None and first:
            self.held = (a.index, first.relation)
        self.tx_ddl |= self.in_tx and blocking
        self.tx_data |= self.in_tx and is_data
        return out

    def _what_the_file_did(self, a: Analysis, node: Any, first: Effect | None) -> list[Finding]:
        """The rules that need what earlier statements did (an enum value added in this transaction,
        a column made NOT NULL, a check added NOT VALID), then what this one does for later ones."""
        out: list[Finding] = []
        if self.in_tx and (used := _new_label_used(node, self.new_labels)):
            out.append(
                finding(
                    a, first, self.file, "new-enum-value-in-transaction", "error", _NEW_LABEL % used, _LABEL
                )
            )
        if self.in_tx and isinstance(node, ast.AlterEnumStmt) and node.newVal and node.typeName:
            self.new_labels.setdefault(str(node.typeName[-1].sval), set()).add(str(node.newVal))
        for cmd in node.cmds or () if isinstance(node, ast.AlterTableStmt) else ():
            sub = AlterTableType(int(cmd.subtype or 0)).name
            column = (str(node.relation.relname), str(cmd.name or getattr(cmd.def_, "colname", "")))
            if sub == "AT_ColumnDefault" and cmd.def_ is None and column in self.not_null:
                out.append(
                    finding(
                        a, first, self.file, "drop-default-not-null", "error", _NO_DEFAULT % column[1], _KEEP
                    )
                )
            if _makes_not_null(cmd):
                self.not_null.add(column)
            checked = _not_null_check(cmd)
            if checked is not None:
                self.nn_checks[str(cmd.def_.conname)] = (str(node.relation.relname), checked)
                if not cmd.def_.skip_validation:
                    self.proven.add((node.relation.relname, checked))
            if sub == "AT_ValidateConstraint" and str(cmd.name) in self.nn_checks:
                self.proven.add(self.nn_checks[str(cmd.name)])
            if (
                sub == "AT_AddConstraint"
                and isinstance(cmd.def_, ast.Constraint)
                and cmd.def_.skip_validation
            ):
                self.not_valid.add(str(cmd.def_.conname))
            if sub == "AT_ValidateConstraint" and self.in_tx and str(cmd.name) in self.not_valid:
                message = (
                    f"VALIDATE of {cmd.name} in the transaction that added it NOT VALID scans under that lock"
                )
                out.append(
                    finding(
                        a, first, self.file, "validate-same-transaction", "error", message, _COMMIT_SOONER
                    )
                )
        return out

    def proves_not_null(self, node: Any, version: int) -> str | None:
        """The check that proves every column an ALTER TABLE sets NOT NULL: PostgreSQL 12+ then
        skips the scan (measured in the corpus). None when a column is not proven so."""
        if version < 12 or not isinstance(node, ast.AlterTableStmt) or node.relation is None:
            return None
        columns = [
            str(c.name)
            for c in node.cmds or ()
            if AlterTableType(int(c.subtype or 0)).name == "AT_SetNotNull"
        ]
        table = str(node.relation.relname)
        if not columns or any((table, c) not in self.proven for c in columns):
            return None
        return ", ".join(n for n, (t, c) in self.nn_checks.items() if t == table and c in columns)

    def keeps_old_name(self, a: Analysis, node: Any) -> None:
        """A table renamed in a transaction whose old name a view takes before it commits: the old app
        reads and writes through the view (measured: the corpus' rename with a view). The rename's
        finding is then advice (``kept``)."""
        relation = getattr(node, "relation", None)
        if (
            isinstance(node, ast.RenameStmt)
            and self.in_tx
            and relation is not None
            and ObjectType(int(node.renameType or 0)) == ObjectType.OBJECT_TABLE
        ):
            self.renamed[str(relation.relname)] = a.index
        view = node.view if isinstance(node, ast.ViewStmt) and node.view is not None else None
        if view is not None and str(view.relname) in self.renamed:
            self.kept.add(self.renamed.pop(str(view.relname)))


_NO_DEFAULT = (
    "%s is NOT NULL (this file made it so) and loses its default: the old app's INSERTs, which leave it"
    " out, fail from here on (measured: null value violates not-null constraint)"
)
_KEEP = "keep the default until no deployed app version inserts without the column; drop it in contract"


_PARTITIONS = (
    "on a partitioned table: CREATE INDEX ON ONLY it, each partition's CONCURRENTLY, then ATTACH; storage"
    " parameters on each partition; a column change on the parent"
)
_NEW_LABEL = (
    "uses %s, which ALTER TYPE … ADD VALUE added in this transaction: PostgreSQL refuses a new enum"
    " value before its transaction commits, so this fails as written (measured: SQLSTATE 55P04)"
)
_LABEL = "COMMIT after ADD VALUE, then use the value in a transaction of its own"


def _new_label_used(node: Any, labels: dict[str, set[str]]) -> str | None:
    """``'value'::enum`` or a column of the enum with ``DEFAULT 'value'``, for a value added in this
    transaction: ``"meh" of mood``, else None."""
    if not labels:
        return None
    from pglast.visitors import Visitor  # noqa: PLC0415

    found: list[str] = []

    def check(type_name: Any, value: Any) -> None:
        names = [str(n.sval) for n in getattr(type_name, "names", None) or ()]
        text = getattr(getattr(value, "val", None), "sval", None)
        if names and isinstance(value, ast.A_Const) and str(text) in labels.get(names[-1], set()):
            found.append(f'"{text}" of {names[-1]}')

    class _Uses(Visitor):
        def visit_TypeCast(self, ancestors: Any, cast: ast.TypeCast) -> None:
            check(cast.typeName, cast.arg)

        def visit_ColumnDef(self, ancestors: Any, col: ast.ColumnDef) -> None:
            for c in col.constraints or ():
                if ConstrType(int(c.contype or 0)) == ConstrType.CONSTR_DEFAULT:
                    check(col.typeName, c.raw_expr)

    _Uses()(node)
    return found[0] if found else None


def _reads(node: Any, relation: str) -> bool:
    """Whether the query names ``relation`` (as written, or its last part)."""
    from pglast.visitors import Visitor  # noqa: PLC0415

    names: set[str] = set()

    class _Rels(Visitor):
        def visit_RangeVar(self, ancestors: Any, rv: ast.RangeVar) -> None:
            names.update({str(rv.relname), f"{rv.schemaname}.{rv.relname}"})

    _Rels()(node)
    return relation in names or relation.rsplit(".", 1)[-1] in names


def _makes_not_null(cmd: Any) -> bool:
    """``ADD COLUMN … NOT NULL`` (or PRIMARY KEY), or ``ALTER COLUMN … SET NOT NULL``."""
    sub = AlterTableType(int(cmd.subtype or 0)).name
    if sub == "AT_SetNotNull":
        return True
    if sub != "AT_AddColumn" or not isinstance(cmd.def_, ast.ColumnDef):
        return False
    kinds = {ConstrType(int(c.contype or 0)) for c in cmd.def_.constraints or ()}
    return bool(kinds & {ConstrType.CONSTR_NOTNULL, ConstrType.CONSTR_PRIMARY}) or bool(cmd.def_.is_not_null)


def _not_null_check(cmd: Any) -> str | None:
    """The column of an ``ADD CONSTRAINT … CHECK (col IS NOT NULL)``, else None."""
    if AlterTableType(int(cmd.subtype or 0)).name != "AT_AddConstraint" or not isinstance(
        cmd.def_, ast.Constraint
    ):
        return None
    expr = cmd.def_.raw_expr
    if (
        isinstance(expr, ast.NullTest)
        and expr.nulltesttype == NullTestType.IS_NOT_NULL
        and isinstance(expr.arg, ast.ColumnRef)
        and len(expr.arg.fields or ()) == 1
    ):
        return str(expr.arg.fields[0].sval)  # type: ignore[index]
    return None


_NO_LOCK_TIMEOUT = (
    "takes %s with no lock_timeout set before it: if it waits, every query on the table queues behind it"
)
_NO_STATEMENT_TIMEOUT = (
    "lock_timeout is set but statement_timeout is not: the statement's own runtime is unbounded"
)
_SET_TIMEOUTS = "SET lock_timeout = '1s' and statement_timeout first, and retry on a timeout"
_IN_TX = "this statement cannot run inside a transaction block: it fails as written"
_COMMIT_SOONER = "commit right after the statement that takes AccessExclusiveLock"
_DATA_WITH_DDL = "data changes and DDL in one transaction hold the DDL's locks for the whole update"
_BATCHED = "backfill in its own batched transactions (zdm migrate)"

"""Findings on a SQL file: each statement's hazards, the file's order, and the phase it is in.

Severity: ``error`` blocks reads or writes beyond a brief catalog update, scans or rewrites under
a lock, breaks the old app, or fails as written (a lock-taking statement with no ``lock_timeout``
set before it, too: the founding design says MUST); ``warning`` is hygiene that does not hurt live
traffic by itself; ``info`` is advice. ``-- zdm: ignore RULE`` in a statement's text silences RULE
for that statement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.enums.parsenodes import AlterTableType, ObjectType, TransactionStmtKind
from pglast.parser import ParseError

from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.lint.analysis import LOCK_MODES, Analysis, analyze
from zdm_runbook.lint.hazards import Finding, finding, statement_hazards
from zdm_runbook.lint.probe import AppStatement

_IGNORE = re.compile(r"--\s*zdm:\s*ignore\s+([\w, -]+)", re.I)
APP_BLOCKING = LOCK_MODES.index("ShareUpdateExclusiveLock")  # stronger than this queues the app
DESTRUCTIVE_PHASES = {"contract"}


class SqlFileError(SpecError):
    """A SQL file cannot be linted (it does not parse); names the file and line."""

    kind = "the SQL"


def _setting(node: Any) -> tuple[str, bool, bool] | None:
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


def _phase_rules(a: Analysis, node: Any, phase: str, file: str) -> list[Finding]:
    destructive = isinstance(node, ast.TruncateStmt | ast.RenameStmt) or (
        isinstance(node, ast.DropStmt)
        and ObjectType(int(node.removeType or 0)) in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_INDEX)
    )
    subs = (
        {AlterTableType(int(c.subtype or 0)).name for c in node.cmds or ()}
        if isinstance(node, ast.AlterTableStmt)
        else set()
    )
    destructive |= bool(subs & {"AT_DropColumn", "AT_DropConstraint"})
    misplaced = []
    if destructive and phase != "contract":
        misplaced.append(
            (f"a drop or rename belongs in contract, not {phase}", "move it to the contract phase")
        )
    if subs & {"AT_SetNotNull", "AT_AlterColumnType"} and phase not in ("switch", "contract"):
        misplaced.append(
            (
                f"NOT NULL and type changes belong in switch or contract, not {phase}",
                "move it to switch (or contract)",
            )
        )
    if isinstance(node, ast.UpdateStmt | ast.DeleteStmt) and phase != "migrate":
        misplaced.append(
            (f"data changes (backfills) belong in migrate, not {phase}", "move it to the migrate phase")
        )
    first = a.effects[0] if a.effects else None
    return [finding(a, first, file, "phase", "error", message, alt) for message, alt in misplaced]


@dataclass
class _Walk:
    """What the file has done so far: transaction, timeouts set, a held AccessExclusiveLock, ..."""

    file: str
    in_tx: bool = False
    timeouts: dict[str, bool] = field(default_factory=dict)
    local: dict[str, bool] = field(default_factory=dict)
    held: tuple[int, str] | None = None
    tx_ddl: bool = False
    tx_data: bool = False
    not_valid: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)  # tables this file created: nobody else's yet

    def only_new(self, a: Analysis) -> bool:
        """Every relation the statement locks was created earlier in this file (or by it)."""
        return bool(a.effects) and all(e.relation in self.created for e in a.effects)

    def control(self, node: Any) -> bool:
        """Track BEGIN/COMMIT and timeout settings; True when ``node`` was one of those."""
        if isinstance(node, ast.TransactionStmt):
            kind = TransactionStmtKind(int(node.kind or 0))
            if kind in (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START):
                self.in_tx, self.held, self.tx_ddl, self.tx_data = True, None, False, False
                self.not_valid, self.local = set(), {}
            elif kind in (TransactionStmtKind.TRANS_STMT_COMMIT, TransactionStmtKind.TRANS_STMT_ROLLBACK):
                self.in_tx, self.held, self.local = False, None, {}
            return True
        setting = _setting(node)
        if setting:
            name, enabled, is_local = setting
            if is_local and not self.in_tx:  # measured: no effect outside a transaction block
                return True
            (self.local if is_local else self.timeouts)[name] = enabled
            return True
        return False

    def rules(self, a: Analysis, node: Any) -> list[Finding]:
        """The file-order rules for one statement, then the state it leaves behind."""
        out: list[Finding] = []
        first = a.effects[0] if a.effects else None
        if isinstance(node, ast.CreateStmt):
            self.created.add(first.relation if first else "")
        old = [e for e in a.effects if e.relation not in self.created]
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
        is_data = isinstance(node, ast.UpdateStmt | ast.DeleteStmt)
        if self.in_tx and ((is_data and self.tx_ddl) or (blocking and self.tx_data)):
            out.append(
                finding(a, first, self.file, "data-in-ddl-transaction", "error", _DATA_WITH_DDL, _BATCHED)
            )
        for cmd in node.cmds or () if isinstance(node, ast.AlterTableStmt) else ():
            sub = AlterTableType(int(cmd.subtype or 0)).name
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
        if self.in_tx and strongest == "AccessExclusiveLock" and self.held is None and first:
            self.held = (a.index, first.relation)
        self.tx_ddl |= self.in_tx and blocking
        self.tx_data |= self.in_tx and is_data
        return out


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


def lint_text(
    text: str,
    file: str = "<sql>",
    version: int = 18,
    phase: str | None = None,
    conn: Any = None,
    app: Sequence[AppStatement] | None = None,
    measure: bool = True,
) -> tuple[list[Analysis], list[Finding]]:
    """Analyse and lint one file's text; a parse error is a :class:`SqlFileError` naming the line.

    With ``conn``, the catalog corrects what text alone cannot know (see
    :mod:`zdm_runbook.lint.catalog_facts`), and, with ``measure``, the file runs on a shadow copy
    of the schema and the measurements overrule the rules (:mod:`zdm_runbook.lint.measured_mode`).
    ``app``: the old app's statements, checked against the migrated shadow.
    """
    try:
        raws = parse_sql(text)
    except ParseError as exc:
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        line = text.count("\n", 0, max(0, where - 1)) + 1
        raise SqlFileError([Problem(f"{file}:{line}", f"cannot parse: {exc.args[0]}")]) from None
    analyses = analyze(text, version, raws)
    walk = _Walk(file)
    findings: list[Finding] = []
    ignores: dict[int, set[str]] = {}
    prev_end = 0
    for a, raw in zip(analyses, raws, strict=True):
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        raw_text, prev_end = text[prev_end:end], end  # comments before the statement count as its own
        ignored = {r.strip() for m in _IGNORE.finditer(raw_text) for r in m[1].split(",")}
        if walk.control(raw.stmt):
            continue
        hazards = [] if walk.only_new(a) else statement_hazards(a, raw.stmt, file, version)
        found = hazards + walk.rules(a, raw.stmt)
        if phase:
            found += _phase_rules(a, raw.stmt, phase, file)
        if conn is not None:
            from zdm_runbook.lint.catalog_facts import refine  # noqa: PLC0415

            found = refine(conn, a, raw.stmt, found, version)
            if measure:  # the shadow copy says whether the type is a constrained domain
                found = [f for f in found if f.rule != "add-column-domain"]
        ignores[a.index] = ignored
        findings += [f for f in found if f.rule not in ignored]
    if conn is not None and measure:
        from zdm_runbook.lint.measured_mode import measure as measured  # noqa: PLC0415

        findings = [
            f
            for f in measured(conn, text, file, analyses, findings, app)
            if f.rule not in ignores.get(f.statement_index, set())
        ]
    return analyses, findings

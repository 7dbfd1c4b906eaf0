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
from dataclasses import replace
from typing import Any

from pglast import ast, parse_sql
from pglast.enums.parsenodes import AlterTableType, ObjectType
from pglast.parser import ParseError

from zdm_runbook.core.errors import Problem, SpecError
from zdm_runbook.lint import do_blocks, psql_meta
from zdm_runbook.lint.analysis import Analysis, analyze
from zdm_runbook.lint.file_walk import Walk
from zdm_runbook.lint.hazards import Finding, finding, statement_hazards
from zdm_runbook.lint.probe import AppStatement

_IGNORE = re.compile(r"--\s*zdm:\s*ignore\s+([\w, -]+)", re.I)
DESTRUCTIVE_PHASES = {"contract"}


class SqlFileError(SpecError):
    """A SQL file cannot be linted (it does not parse); names the file and line."""

    kind = "the SQL"


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


_NO_COMMIT = (
    "COMMIT or ROLLBACK here ends a transaction the function or the caller's block owns: it fails"
    " as written (measured: invalid transaction termination, SQLSTATE 2D000)"
)
_CALL = "a procedure, CALLed outside BEGIN … COMMIT, may commit between its batches; a function may not"
_OUT_OF_DO = "run it as a statement of its own, outside the DO block"
_IN_DO = "a DO block runs as one transaction: this statement cannot run in it, and fails as written"


def _statement(
    walk: Walk, a: Analysis, node: Any, version: int, phase: str | None, conn: Any, measure: bool
) -> list[Finding]:
    """One statement's findings: its hazards, the file-order rules, the phase's and the catalog's."""
    hazards = [] if walk.new.only_new(a) else statement_hazards(a, node, walk.file, version)
    if (new := walk.new.altered(node)) is not None:
        hazards = [_new_table(f, *new) if f.rule in _READS_REFERENCED else f for f in hazards]
    proof = walk.proves_not_null(node, version)
    if proof:
        hazards = [_proven(f, proof) if f.rule == "set-not-null-scan" else f for f in hazards]
    found = hazards + walk.rules(a, node)
    walk.keeps_old_name(a, node)
    if phase:
        found += _phase_rules(a, node, phase, walk.file)
    if conn is not None:
        from zdm_runbook.lint.catalog_facts import refine  # noqa: PLC0415

        found = refine(conn, a, node, found, version)
        if measure:  # the shadow copy says whether the type is a constrained domain
            found = [f for f in found if f.rule != "add-column-domain"]
    return found


def _meta(file: str, m: psql_meta.MetaCommand) -> Finding:
    if m.text.startswith("\\"):
        rule, message = "psql-meta-command", f"psql's {m.text.split()[0]} {m.unseen}"
        alt = "write out as SQL what it runs, and lint that too (catalog mode does not run it either)"
    else:  # a variable or a placeholder lint could only read as a name
        rule, message = "psql-variable", f"{m.text} {m.unseen}"
        alt = "lint the file as its tool renders it, if the value is not a plain name"
    return Finding(file, m.line, 1, -1, rule, "info", None, None, False, False, False, message, alt)


# A foreign key's check on the table the ALTER names: what it reads is that table's rows.
_READS_REFERENCED = frozenset({"add-foreign-key-validated", "add-column-foreign-key-scan"})


def _new_table(f: Finding, table: str, filled: bool) -> Finding:
    """A foreign key's check on a table this file created (see :mod:`.new_tables`)."""
    if not filled:
        message = f"{f.message}, but {table} was created above and has no rows yet: the check reads none"
        return replace(f, severity="info", message=message)
    message = (
        f"{table} was created and filled above: the foreign key's check reads every row given to it,"
        " and the referenced table under ShareRowExclusiveLock, blocking that table's writes meanwhile"
    )
    return replace(f, rule="add-foreign-key-filled-table", message=message)


def _kept(f: Finding) -> Finding:
    message = f"{f.message}: here a view takes the old name in the same transaction, so it does not"
    return replace(f, severity="info", message=message)


def _proven(f: Finding, check: str) -> Finding:
    return replace(
        f, severity="info", message=f"{f.message}, unless proven: here {check}, validated above, proves it"
    )


def _do_block(
    walk: Walk,
    a: Analysis,
    inner: list[do_blocks.Inner],
    version: int,
    phase: str | None,
    conn: Any,
    measure: bool,
    atomic: bool = False,
) -> list[Finding]:
    """A ``DO`` block's statements (or a PL/pgSQL function's, at its call), linted as what they are:
    one transaction (measured on 15 and 18: its locks are held to its end, and CONCURRENTLY fails in
    it), which a COMMIT inside ends and starts again, where it may: not in a function (``atomic``)
    nor inside a transaction block (measured: SQLSTATE 2D000). A session-level SET inside it
    outlasts it; what it locks counts for the transaction around it, if any."""
    atomic = atomic or walk.in_tx
    block = replace(walk, in_tx=True)
    if not walk.in_tx:
        block.held, block.tx_ddl, block.tx_data, block.local = None, False, False, {}
    found: list[Finding] = []
    for statement in inner:
        if statement.text is None:
            found.append(
                finding(
                    replace(a, line=statement.line),
                    None,
                    walk.file,
                    "do-dynamic-sql",
                    "info",
                    f"EXECUTE {statement.expression}: the statement it runs is not known from the text,"
                    " and is not linted",
                    "--dsn-env runs the file on a shadow copy of the schema and measures what it does",
                )
            )
            continue
        try:
            parsed = parse_sql(statement.text)
        except ParseError:
            continue  # PL/pgSQL may have checked it less than the server will; the shadow copy runs it
        for ia, node in zip(analyze(statement.text, version, parsed), parsed, strict=True):
            here = replace(ia, index=a.index, line=statement.line)  # the block's statement, this line
            if atomic and isinstance(node.stmt, ast.TransactionStmt):
                found.append(finding(here, None, walk.file, "commit-in-block", "error", _NO_COMMIT, _CALL))
            if block.control(node.stmt):
                continue
            found += [
                replace(f, message=_IN_DO, safe_alternative=_OUT_OF_DO)
                if f.rule == "concurrently-in-transaction"
                else f
                for f in _statement(block, here, node.stmt, version, phase, conn, measure)
            ]
    walk.timeouts, walk.new, walk.not_valid = block.timeouts, block.new, block.not_valid
    if walk.in_tx:
        walk.held, walk.local = walk.held or block.held, block.local
        walk.tx_ddl, walk.tx_data = block.tx_ddl, block.tx_data
    return found


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
    meta: list[psql_meta.MetaCommand] = []
    if psql_meta.needed(text):  # meta-commands blanked, variables replaced, lines kept, before parsing
        text, meta = psql_meta.strip(text)
    try:
        raws = parse_sql(text)
    except ParseError as exc:
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        line = text.count("\n", 0, max(0, where - 1)) + 1
        raise SqlFileError([Problem(f"{file}:{line}", f"cannot parse: {exc.args[0]}")]) from None
    analyses = analyze(text, version, raws)
    walk = Walk(file)
    functions: dict[str, tuple[Any, str, int]] = {}  # PL/pgSQL functions and procedures the file defines
    findings: list[Finding] = [_meta(file, m) for m in meta if m.unseen]
    ignores: dict[int, set[str]] = {}
    prev_end = 0
    for a, raw in zip(analyses, raws, strict=True):
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        raw_text, prev_end = text[prev_end:end], end  # comments before the statement count as its own
        ignored = {r.strip() for m in _IGNORE.finditer(raw_text) for r in m[1].split(",")}
        if walk.control(raw.stmt):
            continue
        inner, via = do_blocks.statements(raw.stmt, a.text, a.line), ""
        if (name := do_blocks.defined(raw.stmt)) is not None:
            functions[name] = (raw.stmt, a.text, a.line)  # what a later CALL or SELECT of it runs
        if (callee := do_blocks.called(raw.stmt)) in functions:
            inner = do_blocks.run_by(*functions[callee])
            via = f" (in {callee}(), run by the call on line {a.line})"
        if inner is None:
            found = _statement(walk, a, raw.stmt, version, phase, conn, measure)
        else:
            atomic = isinstance(raw.stmt, ast.SelectStmt)  # a function: it may not commit
            found = _do_block(walk, a, inner, version, phase, conn, measure, atomic)
            found = [replace(f, message=f.message + via) for f in found] if via else found
        ignores[a.index] = ignored
        findings += [f for f in found if f.rule not in ignored]
    findings = [_kept(f) if f.rule == "rename" and f.statement_index in walk.kept else f for f in findings]
    guessed = [m.text for m in meta if m.unseen and not m.text.startswith("\\")]
    if conn is not None and measure and guessed:  # a guessed name would fail on the shadow, as written
        why = f"catalog mode did not measure: {', '.join(dict.fromkeys(guessed))} would be guessed"
        findings.append(replace(_meta(file, meta[0]), rule="catalog-mode", message=why))
    elif conn is not None and measure:
        from zdm_runbook.lint.measured_mode import measure as measured  # noqa: PLC0415

        findings = [_meta(file, m) for m in meta if m.unseen] + [
            f
            for f in measured(conn, text, file, analyses, findings, app)
            if f.rule not in ignores.get(f.statement_index, set())
        ]
    return analyses, findings

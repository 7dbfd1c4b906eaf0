"""Catalog mode that measures: the file runs on a shadow of the live schema, and the measurements
overrule the rules wherever a measurement can answer.

For each statement, :mod:`zdm_runbook.lint.verdicts` reads what the probe measured on the shadow
(empty tables; whether the live table has rows comes from its file size). An unsafe verdict
becomes an ``error`` finding per reason (rule ``measured``). A rule's error that the measurement
does not confirm becomes ``info`` and says so. The rules are kept for what an empty copy cannot
show:

- failures that depend on rows (a NOT NULL column added without a default);
- a foreign key's check on a table the file created and filled from live tables (the shadow's are
  empty, so its copy is too);
- whole-table UPDATE or DELETE;
- the phase rules;
- without the old app's statements, drops and renames, which stay errors.

If no shadow can be made, every finding stays the rules' and one ``info`` finding says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pglast import ast, parse_sql
from pglast.stream import RawStream

from zdm_runbook.lint.analysis import LOCK_MODES, Analysis
from zdm_runbook.lint.hazards import Finding
from zdm_runbook.lint.probe import AppStatement, Measured, Probe
from zdm_runbook.lint.shadow import live_rows, matched_share, shadow
from zdm_runbook.lint.verdicts import judge

Conn = Any
# What an empty shadow cannot show: failures and costs that come from rows, and the file's phase.
ROW_RULES = frozenset({"add-column-not-null", "whole-table-update", "add-foreign-key-filled-table", "phase"})
# About the live catalog's state, which the shadow does not copy (pg_dump leaves INVALID indexes out).
STATE_RULES = frozenset({"concurrent-index-if-not-exists"})
WHOLE_TABLE = 0.9  # an UPDATE or DELETE expected to match this share of the rows writes "all" of them
# About the old app: measured only when its statements are known.
APP_RULES = frozenset(
    {
        "drop-column",
        "drop-table",
        "rename",
        "identity-rejects-values",
        "new-constraint-checks-writes",
        "drop-default-not-null",
    }
)


def measure(
    conn: Conn,
    text: str,
    file: str,
    analyses: Sequence[Analysis],
    findings: list[Finding],
    app: Sequence[AppStatement] | None = None,
) -> list[Finding]:
    """``findings`` (the rules') corrected by what the file measurably does on a shadow copy."""
    with shadow(conn) as copy:
        if copy.dsn is None:
            why = f"catalog mode could not measure ({copy.why_not}): these are the rules' findings"
            return [*findings, _note(file, why)]
        with Probe(copy.dsn, app=app or ()) as probe:
            measured = probe.run_file(text)
    sizes = live_rows(conn)
    verdicts = judge(measured, rows=sizes.get)
    kept = (APP_RULES | ROW_RULES if app is None else ROW_RULES) | STATE_RULES
    out: list[Finding] = []
    for i, a in enumerate(analyses):
        verdict = verdicts[i] if i < len(verdicts) else None
        mine = [f for f in findings if f.statement_index == a.index]
        if verdict is None:
            out += mine
            continue
        for f in mine:
            overruled = f.severity == "error" and not verdict.unsafe and f.rule not in kept
            note = f"measured on a shadow copy, not unsafe: {f.message}"
            out.append(replace(f, severity="info", message=note) if overruled else f)
        reasons = list(verdict.reasons)
        whole = _whole_table(conn, a, sizes)
        if whole and not any(r.startswith("writes all") for r in reasons):
            reasons.append(whole)
        out += [_measured(file, a, measured[i], reason) for reason in reasons]
    return out


def _whole_table(conn: Conn, a: Analysis, sizes: dict[str, int | None]) -> str | None:
    """An UPDATE or DELETE whose WHERE the live planner expects to match (nearly) every row: the
    shadow copy has no rows to tell, the live statistics do."""
    try:
        node = parse_sql(a.text)[0].stmt
    except Exception:  # the linter reported the file's parse errors already
        return None
    if not isinstance(node, ast.UpdateStmt | ast.DeleteStmt) or node.whereClause is None or not node.relation:
        return None
    table = RawStream()(node.relation)
    share = matched_share(conn, table, RawStream()(node.whereClause))
    if share is None or share < WHOLE_TABLE or not sizes.get(table):
        return None
    return (
        f"writes about {share:.0%} of the rows of {table} in one transaction (the planner's estimate on the"
        " live database): it row-locks them all"
    )


def _measured(file: str, a: Analysis, m: Measured, reason: str) -> Finding:
    tables = [r for r in m.locks if r not in m.owner]  # the table, rather than one of its indexes
    named = [r for r in tables if f" on {r} " in f"{reason} "]  # the one the reason is about
    # else the most strongly locked (a sequence the table's default reads is locked too, weakly)
    relation = next(iter(named), None) or max(
        tables or list(m.locks), key=lambda r: LOCK_MODES.index(m.locks[r]), default=None
    )
    mode = m.locks.get(relation) if relation else None
    return Finding(
        file,
        a.line,
        1,
        a.index,
        "measured",
        "error",
        relation,
        mode,
        bool(m.rewritten),
        mode == "AccessExclusiveLock",
        mode in ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"),
        reason,
        _instead(reason),
    )


def _instead(reason: str) -> str:
    if reason.startswith("fails as written"):
        return "fix the statement: PostgreSQL refuses it as written"
    if "no lock_timeout" in reason:
        return "SET lock_timeout = '1s' (in the same transaction, or for the session) and retry on a timeout"
    if reason.startswith("the old app breaks"):
        return "expand and contract: keep what the old app uses until contract"
    if reason.startswith("writes all"):
        return "a batched backfill (zdm migrate)"
    return (
        "expand and contract, CONCURRENTLY, or NOT VALID then VALIDATE: nothing heavy under a blocking lock"
    )


def _note(file: str, message: str) -> Finding:
    return Finding(file, 1, 1, -1, "catalog-mode", "info", None, None, False, False, False, message, "")

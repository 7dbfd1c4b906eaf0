"""Per-statement hazards: what one statement risks on a live table, and the safe way instead.

Each finding carries the statement's lock and work (from :mod:`zdm_runbook.lint.analysis`) so a DBA
sees why, and a safe alternative so they see what to do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pglast import ast
from pglast.enums.parsenodes import AlterTableType, ConstrType, ObjectType

from zdm_runbook.lint.analysis import Analysis, Effect
from zdm_runbook.lint.name_hazards import name_hazards


@dataclass(frozen=True)
class Finding:
    """One finding, in the JSON shape ``zdm lint --format json`` prints."""

    file: str
    line: int
    column: int
    statement_index: int
    rule: str
    severity: str
    relation: str | None
    lock_mode: str | None
    rewrites: bool
    blocks_reads: bool
    blocks_writes: bool
    message: str
    safe_alternative: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finding(
    a: Analysis, e: Effect | None, file: str, rule: str, severity: str, message: str, alt: str
) -> Finding:
    return Finding(
        file,
        a.line,
        1,
        a.index,
        rule,
        severity,
        e.relation if e else None,
        e.lock if e else a.strongest,
        bool(e and e.work == "rewrite"),
        bool(e and e.blocks_reads),
        bool(e and e.blocks_writes),
        message,
        alt,
    )


_NEW_COLUMN = "add the column without it, backfill in batches, then set the default"
_NOT_NULL = (
    "ADD CONSTRAINT … CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT in its own transaction;"
    " then SET NOT NULL (no scan, PostgreSQL 12+) and drop the check"
)


def _needs_18(cmd: Any) -> bool:
    """A VIRTUAL generated column, or NOT NULL … NOT VALID: both new in PostgreSQL 18."""
    d = cmd.def_
    if isinstance(d, ast.ColumnDef):
        return any(getattr(c, "generated_kind", None) == "v" for c in d.constraints or ())
    return (
        isinstance(d, ast.Constraint)
        and ConstrType(int(d.contype or 0)) == ConstrType.CONSTR_NOTNULL
        and bool(d.skip_validation)
    )


_APP_VISIBLE = {
    ObjectType.OBJECT_COLUMN,
    ObjectType.OBJECT_TABLE,
    ObjectType.OBJECT_VIEW,
    ObjectType.OBJECT_MATVIEW,
}
_EXPAND_CONTRACT = (
    "expand and contract: add the new column, dual-write, backfill, switch reads, drop the old one"
)


def statement_hazards(a: Analysis, node: Any, file: str, version: int) -> list[Finding]:  # noqa: PLR0915
    out: list[Finding] = []
    main = a.effects[0] if a.effects else None

    def add(rule: str, severity: str, message: str, alt: str, effect: Effect | None = main) -> None:
        out.append(finding(a, effect, file, rule, severity, message, alt))

    if isinstance(node, ast.AlterTableStmt):
        for cmd in node.cmds or ():
            sub = AlterTableType(int(cmd.subtype or 0)).name
            if version < 18 and _needs_18(cmd):
                add(
                    "needs-postgresql-18",
                    "error",
                    f"{'virtual generated columns' if sub == 'AT_AddColumn' else 'NOT NULL … NOT VALID'} need"
                    f" PostgreSQL 18 (this server: {version}): it fails as written",
                    "on older servers: " + _NOT_NULL
                    if sub != "AT_AddColumn"
                    else "a stored column, added empty",
                )
            if sub == "AT_AddColumn" and isinstance(cmd.def_, ast.ColumnDef):
                kinds = {ConstrType(int(c.contype or 0)) for c in cmd.def_.constraints or ()}
                if main and main.work == "rewrite":
                    add(
                        "add-column-rewrite",
                        "error",
                        "this ADD COLUMN fills every row (volatile default, serial, identity, stored"
                        " generated column, or a domain with constraints): a full rewrite under"
                        " AccessExclusiveLock",
                        _NEW_COLUMN,
                    )
                elif a.maybe_domains:
                    add(
                        "add-column-domain",
                        "info",
                        f"if {', '.join(a.maybe_domains)} is a domain with a CHECK or NOT NULL, this ADD"
                        " COLUMN rewrites every row under AccessExclusiveLock (measured on 15 and 18);"
                        " --dsn-env measures it",
                        "a column of the domain's base type, then the check NOT VALID and VALIDATE",
                    )
                if ConstrType.CONSTR_NOTNULL in kinds and ConstrType.CONSTR_DEFAULT not in kinds:
                    add(
                        "add-column-not-null",
                        "error",
                        "NOT NULL without a DEFAULT fails on a non-empty table and breaks the old app's"
                        " INSERTs",
                        "add it nullable with a default, backfill, then " + _NOT_NULL,
                    )
                inline = kinds & {
                    ConstrType.CONSTR_UNIQUE,
                    ConstrType.CONSTR_PRIMARY,
                    ConstrType.CONSTR_CHECK,
                }
                if inline:
                    add(  # measured: the index is built, or the check run, over every row under the lock
                        "add-column-constraint",
                        "error",
                        "a UNIQUE, PRIMARY KEY or CHECK written in ADD COLUMN builds its index or checks"
                        " every row under AccessExclusiveLock",
                        "add the column bare; CREATE UNIQUE INDEX CONCURRENTLY then ADD CONSTRAINT … USING"
                        " INDEX, or ADD CONSTRAINT … CHECK … NOT VALID then VALIDATE",
                    )
                if ConstrType.CONSTR_IDENTITY in kinds:
                    add(
                        "identity-rejects-values",
                        "warning",
                        "GENERATED ALWAYS AS IDENTITY rejects explicit values the old app may write",
                        "use GENERATED BY DEFAULT AS IDENTITY",
                    )
            elif sub in ("AT_EnableRowSecurity", "AT_ForceRowSecurity"):
                who = (
                    "every role but superusers and BYPASSRLS"
                    if sub == "AT_ForceRowSecurity"
                    else ("every role but the table's owner, superusers and BYPASSRLS")
                )
                add(  # measured on 18.6: with no policy, a granted role read 0 rows and its INSERT failed
                    "enable-row-security",
                    "warning",
                    f"from here on {who} reads and writes only the rows a policy allows: with no policy"
                    " for the app's role, the old app's SELECTs return no rows and its INSERTs fail",
                    "CREATE POLICY for the app's roles before enabling it, and try the old app's statements"
                    " as its role",
                )
            elif sub == "AT_SetNotNull":
                add(
                    "set-not-null-scan",
                    "error",
                    "SET NOT NULL scans the whole table under AccessExclusiveLock",
                    _NOT_NULL,
                )
            elif sub == "AT_AlterColumnType":
                add(
                    "alter-column-type",
                    "error",
                    "changing a column's type rewrites the table and its indexes under AccessExclusiveLock"
                    " (unless binary-coercible) and breaks the old app's reads of the column",
                    _EXPAND_CONTRACT,
                )
            elif sub == "AT_SetExpression":
                add(  # measured on 18: a STORED column's table gets a new relfilenode, a VIRTUAL one's not
                    "set-expression-rewrite" if version >= 17 else "needs-postgresql-17",
                    "error",
                    "SET EXPRESSION recomputes a STORED generated column for every row: a full rewrite under"
                    " AccessExclusiveLock (a VIRTUAL one, PostgreSQL 18, is catalog only)"
                    if version >= 17
                    else f"SET EXPRESSION needs PostgreSQL 17 (this server: {version}): it fails as written",
                    "a new plain column kept by a trigger and backfilled in batches (expand and contract),"
                    " then switch reads to it and drop the old one",
                )
            elif sub == "AT_AddConstraint" and isinstance(cmd.def_, ast.Constraint):
                kind = ConstrType(int(cmd.def_.contype or 0))
                validated = not cmd.def_.skip_validation
                if kind == ConstrType.CONSTR_CHECK and validated:
                    add(
                        "add-check-validated",
                        "error",
                        "adding a CHECK scans the whole table under AccessExclusiveLock",
                        "add it NOT VALID, then VALIDATE CONSTRAINT in a separate transaction",
                    )
                elif kind == ConstrType.CONSTR_FOREIGN and validated:
                    add(
                        "add-foreign-key-validated",
                        "error",
                        "adding a FOREIGN KEY scans the table under ShareRowExclusiveLock on both tables,"
                        " blocking their writes",
                        "add it NOT VALID, then VALIDATE CONSTRAINT in a separate transaction",
                    )
                elif kind in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN):
                    add(
                        "new-constraint-checks-writes",
                        "info",
                        "a NOT VALID constraint still checks every new write: the old app's writes must"
                        " satisfy it",
                        "deploy the app that satisfies it first",
                    )
                elif (
                    kind in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_EXCLUSION)
                    and not cmd.def_.indexname
                ):
                    add(
                        "add-unique-constraint",
                        "error",
                        "this constraint builds its index under AccessExclusiveLock",
                        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT … USING INDEX",
                    )
                elif kind == ConstrType.CONSTR_PRIMARY:  # USING INDEX: no build, but NOT NULL
                    add(
                        "primary-key-using-index-scan",
                        "warning",
                        "ADD PRIMARY KEY USING INDEX first makes each key column NOT NULL: a full scan"
                        " under AccessExclusiveLock for any column not already NOT NULL (or proven so)",
                        f"for each key column that may be NULL: {_NOT_NULL}; then add the key",
                    )
            elif sub == "AT_DetachPartition" and getattr(cmd.def_, "concurrent", False) and version < 14:
                add(
                    "detach-concurrently-version",
                    "error",
                    "DETACH PARTITION CONCURRENTLY needs PostgreSQL 14",
                    "upgrade first, or detach in a quiet window with lock_timeout set",
                )
            elif sub == "AT_DetachPartition" and not getattr(cmd.def_, "concurrent", False):
                add(  # measured: a brief catalog update, bounded by lock_timeout like any other
                    "detach-partition-blocking",
                    "warning",
                    "DETACH PARTITION takes AccessExclusiveLock on the parent table (briefly)",
                    "DETACH PARTITION … CONCURRENTLY (PostgreSQL 14+), outside a transaction block",
                )
            elif (
                sub == "AT_AttachPartition" and ObjectType(int(node.objtype or 0)) == ObjectType.OBJECT_TABLE
            ):
                add(  # measured: the partition-to-be is scanned under AccessExclusiveLock on it
                    "attach-partition-scan",
                    "error",
                    "ATTACH PARTITION scans the new partition (and a default partition) for rows outside"
                    " its bounds, under AccessExclusiveLock on the partition",
                    "first add a CHECK constraint matching the bounds (NOT VALID, then VALIDATE): the scan"
                    " is then skipped",
                )
            elif sub == "AT_DropColumn":
                add(
                    "drop-column",
                    "error",
                    "dropping a column breaks the old app that reads it",
                    _EXPAND_CONTRACT,
                )
            elif sub in ("AT_SetLogged", "AT_SetUnLogged", "AT_SetTableSpace", "AT_SetAccessMethod"):
                add(
                    "rewrite",
                    "error",
                    f"{sub[3:]} rewrites the table under AccessExclusiveLock",
                    "avoid on a live table",
                )
    elif isinstance(node, ast.IndexStmt) and not node.concurrent and getattr(node.relation, "inh", True):
        add(
            "create-index-blocking",
            "error",
            "CREATE INDEX without CONCURRENTLY blocks writes (ShareLock) while it builds",
            "CREATE INDEX CONCURRENTLY, outside a transaction block",
        )
    elif isinstance(node, ast.IndexStmt) and node.concurrent and node.if_not_exists:
        add(  # measured: an INVALID index of that name is skipped with a NOTICE, and stays INVALID
            "concurrent-index-if-not-exists",
            "warning",
            "IF NOT EXISTS also skips an INVALID index that a failed earlier build left under this name:"
            " the migration then succeeds with no usable index",
            "before it, drop the index CONCURRENTLY if pg_index says it is not indisvalid",
        )
    elif isinstance(node, ast.DropStmt):
        obj = ObjectType(int(node.removeType or 0))
        if obj == ObjectType.OBJECT_INDEX and not node.concurrent:
            add(  # measured: a brief catalog update, bounded by lock_timeout like any other
                "drop-index-blocking",
                "warning",
                "DROP INDEX without CONCURRENTLY takes AccessExclusiveLock on the table (briefly)",
                "DROP INDEX CONCURRENTLY",
            )
        elif obj == ObjectType.OBJECT_TABLE:
            add(
                "drop-table",
                "error",
                "dropping a table breaks the old app that uses it",
                "drop it in contract only",
            )
    elif isinstance(node, ast.ReindexStmt):
        concurrent = any(p.defname == "concurrently" for p in node.params or ())
        if not concurrent:
            add(
                "reindex-blocking",
                "error",
                "REINDEX blocks writes while it rebuilds",
                "REINDEX … CONCURRENTLY (12+)",
            )
        elif version < 12:
            add(
                "reindex-concurrently-version",
                "error",
                "REINDEX CONCURRENTLY needs PostgreSQL 12",
                "build a new index",
            )
    elif isinstance(node, ast.VacuumStmt) and main and main.work == "rewrite":
        add(
            "vacuum-full",
            "error",
            "VACUUM FULL rewrites the table under AccessExclusiveLock",
            "pg_repack or pg_squeeze",
        )
    elif isinstance(node, ast.ClusterStmt):
        add(
            "cluster",
            "error",
            "CLUSTER rewrites the table under AccessExclusiveLock",
            "pg_repack or pg_squeeze",
        )
    elif isinstance(node, ast.TruncateStmt):
        add(
            "truncate",
            "error",
            "TRUNCATE deletes every row under AccessExclusiveLock",
            "never on a live table",
        )
    elif (
        isinstance(node, ast.AlterDomainStmt)
        and node.subtype == "C"
        and isinstance(node.def_, ast.Constraint)
    ):
        if not node.def_.skip_validation:
            add(
                "domain-constraint-validated",
                "error",
                "adding a domain constraint checks every column of that domain in every table, under locks",
                "ADD CONSTRAINT … NOT VALID, then VALIDATE CONSTRAINT in a separate transaction",
            )
    elif isinstance(node, ast.AlterDomainStmt) and node.subtype in ("V", "O"):
        add(  # measured: every table using the domain is scanned under ShareLock
            "domain-scan",
            "error",
            "VALIDATE CONSTRAINT and SET NOT NULL on a domain scan every table that uses it, under ShareLock",
            "a NOT VALID table constraint on each column instead, validated table by table",
        )
    elif isinstance(node, ast.RefreshMatViewStmt) and not node.concurrent:
        add(  # measured: rewritten under AccessExclusiveLock, which blocks its readers
            "refresh-matview-blocking",
            "error",
            "REFRESH MATERIALIZED VIEW rebuilds it under AccessExclusiveLock: its readers wait",
            "REFRESH MATERIALIZED VIEW CONCURRENTLY (it needs a unique index)",
        )
    elif isinstance(node, ast.RenameStmt) and ObjectType(int(node.renameType or 0)) in _APP_VISIBLE:
        add("rename", "error", "renaming breaks the old app that uses the old name", _EXPAND_CONTRACT)
    elif isinstance(node, ast.LockStmt):
        blocks = bool(main and main.blocks_writes)
        add(  # measured: brief when committed at once; work under it is the file walk's finding
            "explicit-lock",
            "warning",
            "an explicit LOCK TABLE holds its lock until commit" + (", blocking writes" if blocks else ""),
            "rely on the statements' own locks",
        )
    elif isinstance(node, ast.UpdateStmt | ast.DeleteStmt) and node.whereClause is None:
        add(
            "whole-table-update",
            "error",
            "an UPDATE or DELETE of the whole table is one long transaction holding every row lock",
            "a batched backfill (zdm migrate)",
        )
    for rule, severity, message, alt in name_hazards(node):
        add(rule, severity, message, alt)
    return out

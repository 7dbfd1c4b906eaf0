"""The primitives' steps: one function per operation that maps to one kind of schema change.

Each follows the founding design: new columns nullable or with a non-volatile default; FK and
CHECK as NOT VALID then VALIDATE; UNIQUE through a concurrent unique index; every index built and
dropped CONCURRENTLY; drops only in contract. :func:`zdm_runbook.plan.planner.plan_operation`
picks the function for an operation (the recipes that span phases are in :mod:`.recipes`).
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.plan import alterations as alt
from zdm_runbook.plan import steps as s
from zdm_runbook.plan.recipes import not_null_steps
from zdm_runbook.plan.steps import BackfillSpec, StepBuilder
from zdm_runbook.spec.model import Phase, Table
from zdm_runbook.spec.operations import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddPrimaryKey,
    AddUnique,
    Backfill,
    CreateIndex,
    CreateTable,
    DropColumn,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    DropTable,
    RawSql,
    SetComment,
    SetDefault,
    SetNotNull,
    SetReplicaIdentity,
)

Q = sql.SQL


def create_table(b: StepBuilder, op: CreateTable) -> None:
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


def add_column(b: StepBuilder, op: AddColumn) -> None:
    b.add(
        "add-column",
        Phase.EXPAND,
        f"add {'nullable ' if op.default is None else ''}{op.table}.{op.column}"
        f"{' with a non-volatile default (catalog only)' if op.default else ''}",
        s.add_column(op.table, op.column, op.type.sql, op.default),
        s.column_exists(op.table, op.column),
        (op.table,),
    )


def create_index(b: StepBuilder, op: CreateIndex) -> None:
    if op.columns:
        keys: sql.Composable = s.identifiers(op.columns)
    elif op.expression is not None:
        keys = Q("({})").format(op.expression.sql)
    else:  # pragma: no cover - the reader requires exactly one of columns and expression
        raise ValueError(f"index {op.name}: neither columns nor expression")
    index = s.IndexSpec(op.table, op.name, keys, op.unique, op.method, op.where)
    b.add(
        "create",
        Phase.EXPAND,
        f"build {'unique ' if op.unique else ''}index {op.name} on {op.table} CONCURRENTLY"
        " (if the table is partitioned: ON ONLY the parent, each partition CONCURRENTLY, then ATTACH)",
        s.create_index_concurrently(
            op.table, op.name, keys, unique=op.unique, method=op.method, where=op.where
        ),
        s.index_valid(op.table.schema, op.name),
        (op.table,),
        transactional=False,
        builds_index=(op.table.schema, op.name),
        long_running=True,
        index=index,
    )


def add_constraint(b: StepBuilder, op: AddCheck | AddForeignKey) -> None:
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
    add = Q("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
        s.qname(op.table), sql.Identifier(op.name), body
    )
    # A foreign key locks both tables; ALTER TABLE takes the child first. Lock the referenced table
    # first, the order an app writing a parent row and then its children uses: otherwise every
    # transaction between those two writes and this step wait on each other until lock_timeout.
    first: tuple[s.Statement, ...] = ()
    note = ""
    if isinstance(op, AddForeignKey) and op.ref_table != op.table:
        first = (
            Q("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(s.qname(op.ref_table)),
            s.shorter_lock_timeout(),  # the child's lock is taken while holding the parent's
        )
        note = f"; {op.ref_table} locked first, as apps do"
    b.add(
        "add-not-valid",
        Phase.SWITCH,
        f"add {kind} {op.name} NOT VALID (no scan){note}",
        (*first, add),
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


def add_unique(b: StepBuilder, op: AddUnique) -> None:
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


def set_not_null(b: StepBuilder, op: SetNotNull) -> None:
    not_null_steps(b, Phase.SWITCH, op.table, op.column)


def backfill(b: StepBuilder, op: Backfill) -> None:
    pending = Q(" OR ").join(
        Q("{} IS DISTINCT FROM ({})").format(sql.Identifier(col), e.sql) for col, e in op.assignments
    )
    reads = frozenset().union(*(e.columns for _, e in op.assignments), op.where.columns if op.where else ())
    fill = BackfillSpec(
        op.table,
        tuple((c, e.sql) for c, e in op.assignments),
        pending,
        op.where,
        reads | {c for c, _ in op.assignments},
    )
    targets = ", ".join(c for c, _ in op.assignments)
    b.add_backfill(f"backfill {op.table} ({targets}) in batches", fill)


def set_default(b: StepBuilder, op: SetDefault) -> None:
    """Catalog only (no rewrite, whatever the expression): rows inserted from now on get it."""
    b.add(
        "set",
        Phase.EXPAND,
        f"set the default of {op.table}.{op.column} for new rows (catalog only)",
        s.set_default(op.table, op.column, op.default),
        None,  # the server's deparsed default is no reliable match for the spec's text: the ledger
        (op.table,),
    )


def drop_default(b: StepBuilder, op: DropDefault) -> None:
    """Catalog only; in contract unless the spec moves it (the catalog check keeps a NOT NULL
    column's default until contract: the old app's INSERTs that omit the column rely on it)."""
    b.add(
        "drop",
        op.phase,
        f"drop the default of {op.table}.{op.column} (catalog only)",
        s.drop_default(op.table, op.column),
        Q("SELECT NOT ({})").format(s.column_has_default(op.table, op.column)),
        (op.table,),
    )


def drop_not_null(b: StepBuilder, op: DropNotNull) -> None:
    """In expand: the old app never writes NULL into it, and the new app may from now on."""
    b.add(
        "drop",
        Phase.EXPAND,
        f"drop NOT NULL on {op.table}.{op.column} (catalog only)",
        s.drop_not_null(op.table, op.column),
        Q("SELECT NOT ({})").format(s.column_not_null(op.table, op.column)),
        (op.table,),
    )


def set_comment(b: StepBuilder, op: SetComment) -> None:
    what = f"{op.table}.{op.column}" if op.column else str(op.table)
    b.add(
        "comment",
        Phase.EXPAND,
        f"{'set' if op.comment is not None else 'remove'} the comment on {what}",
        alt.comment(op.table, op.column, op.comment),
        alt.comment_is(op.table, op.column, op.comment),
        (op.table,),
    )


def set_replica_identity(b: StepBuilder, op: SetReplicaIdentity) -> None:
    using = f" (index {op.index})" if op.index else ""
    b.add(
        "set",
        Phase.EXPAND,
        f"replica identity {op.identity}{using} on {op.table} (catalog only; what logical decoding logs)",
        alt.replica_identity(op.table, op.identity, op.index),
        alt.replica_identity_is(op.table, op.identity, op.index),
        (op.table,),
    )


def add_primary_key(b: StepBuilder, op: AddPrimaryKey) -> None:
    """Switch: each column NOT NULL through a validated check, a unique index built CONCURRENTLY,
    then ADD PRIMARY KEY USING INDEX: catalog only, with nothing left to scan under the lock."""
    done = s.constraint_exists(op.table, op.name)
    for column in op.columns:
        label = f"-{column}" if len(op.columns) > 1 else ""
        not_null_steps(b, Phase.SWITCH, op.table, column, superseded_when=done, label=label)
    b.add(
        "index",
        Phase.SWITCH,
        f"build unique index {op.name} CONCURRENTLY",
        s.create_index_concurrently(op.table, op.name, s.identifiers(op.columns), unique=True),
        Q("SELECT ({}) OR ({})").format(s.index_valid(op.table.schema, op.name), done),
        (op.table,),
        transactional=False,
        builds_index=(op.table.schema, op.name),
        long_running=True,
    )
    b.add(
        "constraint",
        Phase.SWITCH,
        f"add PRIMARY KEY {op.name} USING INDEX (catalog only: its columns are NOT NULL already)",
        Q("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
            s.qname(op.table), sql.Identifier(op.name), sql.Identifier(op.name)
        ),
        done,
        (op.table,),
        locks=f"{op.table} AccessExclusiveLock (catalog: its columns are NOT NULL already, nothing to scan)",
    )


def drop_column(b: StepBuilder, op: DropColumn) -> None:
    b.add(
        "drop",
        Phase.CONTRACT,
        f"drop column {op.table}.{op.column}",
        s.drop_column(op.table, op.column),
        s.column_absent(op.table, op.column),
        (op.table,),
    )


def drop_constraint(b: StepBuilder, op: DropConstraint) -> None:
    b.add(
        "drop",
        Phase.CONTRACT,
        f"drop constraint {op.name} on {op.table}",
        s.drop_constraint(op.table, op.name),
        s.constraint_absent(op.table, op.name),
        (op.table,),
    )


def drop_index(b: StepBuilder, op: DropIndex) -> None:
    b.add(
        "drop",
        Phase.CONTRACT,
        f"drop index {op.schema}.{op.name} CONCURRENTLY",
        s.drop_index_concurrently(op.schema, op.name),
        s.relation_absent(op.schema, op.name),
        transactional=False,
    )


def drop_table(b: StepBuilder, op: DropTable) -> None:
    b.add(
        "drop",
        Phase.CONTRACT,
        f"drop table {op.table}",
        Q("DROP TABLE IF EXISTS {}").format(s.qname(op.table)),
        s.relation_absent(op.table.schema, op.table.name),
        (op.table,),
    )


def raw_sql(b: StepBuilder, op: RawSql) -> None:
    b.add(
        "sql",
        op.phase,
        f"{op.description} (raw SQL: {op.reason})",
        tuple(st.sql for st in op.statements),
        None,
        transactional=not any(st.concurrent for st in op.statements),
        long_running=any(st.concurrent for st in op.statements),
    )

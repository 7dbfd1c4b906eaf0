"""Steps: the unit that runs, as data. Each carries its SQL (composed, never formatted), its phase,
whether it must run outside a transaction, and a catalog query telling whether it is already done.

The builders here are the only place schema-change SQL is written; :mod:`zdm_runbook.plan.planner` picks
which builders each operation needs, and the executors decide how to run them.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import TypedDict, Unpack

from psycopg import sql

from zdm_runbook.spec import operations
from zdm_runbook.spec.model import Phase, Table
from zdm_runbook.spec.sqltext import Expr, regclass

Q = sql.SQL
Statement = sql.Composed | sql.SQL  # what a connection executes: composed SQL, never a formatted str
DOLLAR_TAG = "$zdm_sync$"
# SQL keywords for the values a spec may name (spec.operations lists them).
INDEX_METHODS = {m: Q(m) for m in operations.INDEX_METHODS}
FK_ACTIONS = {a: Q(a.upper()) for a in operations.FK_ACTIONS}


@dataclass(frozen=True)
class BackfillSpec:
    """What the migrate phase copies: ``SET col = expr`` on rows matching ``pending``.

    ``reads`` names the columns its expressions and filter read (None: not known), which decides
    whether it may share one pass over the table with another backfill (:func:`one_pass`).
    ``pinned_by``: the dual-write function whose settings its session takes (``(schema, name)``,
    :data:`zdm_runbook.plan.dual_write.PINNED`), so that both compute the same values.
    """

    table: Table
    assignments: tuple[tuple[str, sql.Composable], ...]
    pending: sql.Composable
    where: Expr | None = None
    reads: frozenset[str] | None = None
    pinned_by: tuple[str, str] | None = None

    @property
    def writes(self) -> frozenset[str]:
        return frozenset(col for col, _ in self.assignments)

    def condition(self) -> sql.Composed:
        """Rows still to do: the ``where`` filter (if any) and the pending predicate."""
        if self.where is None:
            return Q("({})").format(self.pending)
        return Q("({}) AND ({})").format(self.where.sql, self.pending)

    def update(self, key_range: sql.Composable | None = None) -> sql.Composed:
        """The UPDATE, for the whole table or (for the backfill engine) one key range."""
        sets = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(col), value) for col, value in self.assignments
        )
        cond = self.condition() if key_range is None else Q("{} AND {}").format(key_range, self.condition())
        return Q("UPDATE {} SET {} WHERE {}").format(qname(self.table), sets, cond)


def order_matters(a: BackfillSpec, b: BackfillSpec) -> bool:
    """Whether running ``a`` and ``b`` in one UPDATE, or in either order, could differ from running
    them one after the other: on one table, one writes a column the other reads or writes (or what
    they read is not known)."""
    if a.table != b.table:
        return False
    if a.reads is None or b.reads is None:
        return True
    return bool(a.writes & (b.reads | b.writes) or b.writes & (a.reads | a.writes))


def one_pass(specs: list[BackfillSpec]) -> bool:
    """Whether ``specs`` can run as one UPDATE per row: one table, and no two of them whose order
    matters (in one UPDATE every expression sees the row as it was, so a fill reading another's
    target must wait for it to finish)."""
    return len({spec.table for spec in specs}) == 1 and not any(
        order_matters(a, b) for a, b in itertools.combinations(specs, 2)
    )


# A lock taken while the step already holds another waits at most half of deadlock_timeout (and
# never longer than the step's lock_timeout): an app session that holds the second table and wants
# the first then outwaits us, and our attempt (retried) is the one that gives up, never the app's
# transaction as a deadlock victim. Measured: with both at 1 s, the app got DeadlockDetected.
HELD_LOCK_TIMEOUT = Q(
    "set_config('lock_timeout', (SELECT CASE WHEN lt.v = 0 THEN dl.v / 2 ELSE least(lt.v, dl.v / 2) END"
    " FROM (SELECT setting::bigint AS v FROM pg_settings WHERE name = 'lock_timeout') lt,"
    " (SELECT setting::bigint AS v FROM pg_settings WHERE name = 'deadlock_timeout') dl)::text, true)"
)


def shorter_lock_timeout() -> sql.Composed:
    """The statement that applies :data:`HELD_LOCK_TIMEOUT` for the rest of the transaction."""
    return Q("SELECT {}").format(HELD_LOCK_TIMEOUT)


@dataclass(frozen=True)
class IndexSpec:
    """An index a step builds, as data: on a partitioned table the executor builds it the way
    PostgreSQL allows without blocking writes (``ON ONLY`` the parent, each partition
    ``CONCURRENTLY``, then ``ATTACH``), which one statement cannot say."""

    table: Table
    name: str
    keys: sql.Composable
    unique: bool = False
    method: str = "btree"
    where: Expr | None = None
    # what follows the keys, as the catalog has it (an index twin): INCLUDE, NULLS NOT DISTINCT, WITH,
    # TABLESPACE, WHERE
    tail: sql.Composable | None = None

    def on(self, table: Table, name: str) -> sql.Composed:
        """The same index on ``table`` (a partition), built CONCURRENTLY."""
        return create_index_concurrently(
            table, name, self.keys, unique=self.unique, method=self.method, where=self.where, tail=self.tail
        )

    def on_only(self, table: Table, name: str) -> sql.Composed:
        """The index on a partitioned ``table`` alone: invalid, nothing built, until partitions attach."""
        stmt = Q("CREATE {}INDEX IF NOT EXISTS {} ON ONLY {} USING {} ({})").format(
            Q("UNIQUE ") if self.unique else Q(""),
            sql.Identifier(name),
            qname(table),
            _method(self.method),
            self.keys,
        )
        return _clauses(stmt, self.tail, self.where)


@dataclass(frozen=True)
class Step:
    """One idempotent unit of a phase: statements run in one transaction (or one, outside any)."""

    key: str
    phase: Phase
    description: str
    statements: tuple[Statement, ...]
    done_when: Statement | None = None
    transactional: bool = True
    tables: tuple[Table, ...] = ()
    builds_index: tuple[str, str] | None = None
    backfill: BackfillSpec | None = None
    operation: int = 0
    long_running: bool = False  # scans the table (VALIDATE, index build): the long statement_timeout
    # What the step locks, said by the planner where static analysis cannot see it (a DO block).
    locks: str | None = None
    index: IndexSpec | None = None  # the index it builds, for partitioned tables
    # (table, key, shadow, left to the spec): the indexes on key are twinned on shadow, read when it
    # runs (with the last True, only the plain ones: the spec twins the others)
    twins: tuple[Table, str, str, bool] | None = None
    # True once a later phase has moved past this step (contract dropped the column it reads):
    # checked before done_when, which may no longer even parse.
    superseded_when: Statement | None = None

    def __post_init__(self) -> None:
        if not self.transactional and len(self.statements) != 1:
            raise ValueError(f"{self.key}: a step outside a transaction must be a single statement")

    def render(self) -> str:
        """The SQL as text, one statement per line group (for plans, notebooks and logs)."""
        return ";\n".join(s.as_string(None) for s in self.statements) + ";"


class StepOptions(TypedDict, total=False):
    """What a planner may set on a step besides its SQL (see :class:`Step`)."""

    transactional: bool
    builds_index: tuple[str, str] | None
    backfill: BackfillSpec | None
    long_running: bool
    superseded_when: Statement | None
    locks: str | None
    index: IndexSpec | None
    twins: tuple[Table, str, str, bool] | None


class StepBuilder:
    """Collects the steps of one operation, keyed ``NN-operation-part`` (stable for the ledger)."""

    def __init__(self, index: int, operation: str) -> None:
        self.index, self.operation, self.steps = index, operation, list[Step]()

    def add(
        self,
        part: str,
        phase: Phase,
        description: str,
        statements: tuple[Statement, ...] | Statement,
        done_when: Statement | None,
        tables: tuple[Table, ...] = (),
        **extra: Unpack[StepOptions],
    ) -> None:
        stmts = statements if isinstance(statements, tuple) else (statements,)
        key = f"{self.index + 1:02d}-{self.operation}-{part}"
        self.steps.append(
            Step(
                key,
                phase,
                description,
                stmts,
                done_when,
                tables=tables,
                operation=self.index,
                **extra,
            )
        )

    def add_backfill(self, description: str, fill: BackfillSpec, **extra: Unpack[StepOptions]) -> None:
        """The migrate step of a backfill: done when no row still matches ``fill``'s condition."""
        options: StepOptions = {**extra, "backfill": fill}
        self.add(
            "backfill",
            Phase.MIGRATE,
            description,
            fill.update(),
            no_rows(fill.table, fill.condition()),
            (fill.table,),
            **options,
        )


def qname(table: Table) -> sql.Identifier:
    return sql.Identifier(table.schema, table.name)


def derived_name(*parts: str, suffix: str) -> str:
    """A deterministic name within 63 bytes: readable prefix, plus a short hash when truncated."""
    base = "_".join(parts)
    name = f"{base}_{suffix}"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = 63 - len(suffix) - len(digest) - 2
    return f"{base.encode()[:keep].decode(errors='ignore')}_{digest}_{suffix}"


# --- catalog guards: each is a query returning one boolean, true when the step's effect exists ---


def column_exists(table: Table, column: str) -> sql.Composed:
    return Q(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {} AND attname = {}"
        " AND attnum > 0 AND NOT attisdropped)"
    ).format(regclass(table.schema, table.name), sql.Literal(column))


def column_absent(table: Table, column: str) -> sql.Composed:
    return Q("SELECT NOT ({})").format(column_exists(table, column))


def column_has_default(table: Table, column: str) -> sql.Composed:
    return Q(
        "SELECT EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid"
        " AND a.attnum = d.adnum WHERE d.adrelid = {} AND a.attname = {})"
    ).format(regclass(table.schema, table.name), sql.Literal(column))


def column_not_null(table: Table, column: str) -> sql.Composed:
    return Q(
        "SELECT coalesce((SELECT attnotnull FROM pg_attribute WHERE attrelid = {} AND attname = {}), false)"
    ).format(regclass(table.schema, table.name), sql.Literal(column))


def relation_exists(schema: str, name: str) -> sql.Composed:
    return Q("SELECT {} IS NOT NULL").format(regclass(schema, name))


def relation_absent(schema: str, name: str) -> sql.Composed:
    return Q("SELECT {} IS NULL").format(regclass(schema, name))


def index_valid(schema: str, name: str) -> sql.Composed:
    return Q("SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = {} AND indisvalid)").format(
        regclass(schema, name)
    )


def constraint_exists(table: Table, name: str, validated: bool = False) -> sql.Composed:
    extra = Q(" AND convalidated") if validated else Q("")
    return Q("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {} AND conname = {}{})").format(
        regclass(table.schema, table.name), sql.Literal(name), extra
    )


def constraint_absent(table: Table, name: str) -> sql.Composed:
    return Q("SELECT NOT ({})").format(constraint_exists(table, name))


def trigger_exists(table: Table, name: str) -> sql.Composed:
    return Q("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = {} AND tgname = {})").format(
        regclass(table.schema, table.name), sql.Literal(name)
    )


def no_rows(table: Table, predicate: sql.Composable) -> sql.Composed:
    return Q("SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {})").format(qname(table), predicate)


def all_of(*guards: sql.Composable) -> sql.Composed:
    return Q("SELECT ({})").format(Q(") AND (").join(Q("{}").format(g) for g in guards))


def any_of(*guards: sql.Composable) -> sql.Composed:
    return Q("SELECT ({})").format(Q(") OR (").join(Q("{}").format(g) for g in guards))


# --- statements ---


def add_column(table: Table, column: str, type_: sql.Composable, default: Expr | None = None) -> sql.Composed:
    stmt = Q("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        qname(table), sql.Identifier(column), type_
    )
    return stmt if default is None else Q("{} DEFAULT {}").format(stmt, default.sql)


def set_default(table: Table, column: str, default: Expr) -> sql.Composed:
    return Q("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
        qname(table), sql.Identifier(column), default.sql
    )


def drop_default(table: Table, column: str) -> sql.Composed:
    return Q("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(qname(table), sql.Identifier(column))


def drop_not_null(table: Table, column: str) -> sql.Composed:
    return Q("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(qname(table), sql.Identifier(column))


def add_check_not_valid(table: Table, name: str, condition: sql.Composable) -> sql.Composed:
    return Q("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID").format(
        qname(table), sql.Identifier(name), condition
    )


def validate_constraint(table: Table, name: str) -> sql.Composed:
    return Q("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(qname(table), sql.Identifier(name))


def set_not_null(table: Table, column: str) -> sql.Composed:
    return Q("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(qname(table), sql.Identifier(column))


def drop_constraint(table: Table, name: str) -> sql.Composed:
    return Q("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(qname(table), sql.Identifier(name))


def drop_column(table: Table, column: str) -> sql.Composed:
    return Q("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(qname(table), sql.Identifier(column))


def create_index_concurrently(
    table: Table,
    name: str,
    keys: sql.Composable,
    *,
    unique: bool = False,
    method: str = "btree",
    where: Expr | None = None,
    tail: sql.Composable | None = None,
) -> sql.Composed:
    stmt = Q("CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING {} ({})").format(
        Q("UNIQUE ") if unique else Q(""),
        sql.Identifier(name),
        qname(table),
        _method(method),
        keys,
    )
    return _clauses(stmt, tail, where)


def _method(name: str) -> sql.Composable:
    """An index method: one the spec may name, or (for an index read from the catalog) any other."""
    return INDEX_METHODS.get(name) or sql.Identifier(name)


def _clauses(stmt: sql.Composed, tail: sql.Composable | None, where: Expr | None) -> sql.Composed:
    """A CREATE INDEX with what follows its keys: ``tail`` (see :class:`IndexSpec`), or the spec's WHERE."""
    if tail is not None:
        stmt = Q("{} {}").format(stmt, tail)
    return stmt if where is None else Q("{} WHERE {}").format(stmt, where.sql)


def drop_index_concurrently(schema: str, name: str) -> sql.Composed:
    return Q("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, name))


def identifiers(names: tuple[str, ...]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)

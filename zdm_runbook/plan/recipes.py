"""The recipes that span all four phases: rename_column, change_type, add_not_null_column.

Renames and type changes are add-new + dual-write + backfill + switch + drop-old, never an
in-place RENAME or ALTER TYPE; NOT NULL is CHECK NOT VALID → VALIDATE → SET NOT NULL → drop the
check, placed in switch only when the old app's INSERTs can satisfy it (a default), else contract.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.plan import (
    column_carry,
    column_defaults,
    dual_write,
    fk_twins,
    index_twins,
    keyswap,
)
from zdm_runbook.plan import steps as s
from zdm_runbook.plan.steps import BackfillSpec, StepBuilder
from zdm_runbook.spec.change import Change
from zdm_runbook.spec.key_dependents import spec_twins_others
from zdm_runbook.spec.model import Phase, Table
from zdm_runbook.spec.operations import AddNotNullColumn, ChangeKeyType, ChangeType, RenameColumn

Q = sql.SQL


def not_null_steps(
    b: StepBuilder,
    phase: Phase,
    table: Table,
    column: str,
    why: str = "",
    superseded_when: s.Statement | None = None,
    unless: s.Statement | None = None,
    label: str = "",
) -> None:
    """NOT NULL without a long ACCESS EXCLUSIVE scan: CHECK NOT VALID, VALIDATE, SET NOT NULL.

    ``unless``: a condition under which the column is to stay nullable (the steps count as done)."""
    check = s.derived_name(table.name, column, suffix="zdm_nn_check")
    cond = Q("{} IS NOT NULL").format(sql.Identifier(column))
    done = s.column_not_null(table, column)
    if unless is not None:
        done = Q("SELECT ({}) OR ({})").format(done, unless)
    b.add(
        f"check-not-valid{label}",
        phase,
        f"add CHECK ({column} IS NOT NULL) NOT VALID on {table} (new writes checked, no scan){why}",
        s.add_check_not_valid(table, check, cond),
        Q("SELECT ({}) OR ({})").format(done, s.constraint_exists(table, check)),
        (table,),
        superseded_when=superseded_when,
    )
    b.add(
        f"validate{label}",
        phase,
        f"VALIDATE the not-null check on {table}.{column} (scans under SHARE UPDATE EXCLUSIVE only)",
        s.validate_constraint(table, check),
        Q("SELECT ({}) OR ({})").format(done, s.constraint_exists(table, check, validated=True)),
        (table,),
        long_running=True,
        superseded_when=superseded_when,
    )
    b.add(
        f"set-not-null{label}",
        phase,
        f"SET NOT NULL on {table}.{column} (no scan: proven by the validated check), drop the check",
        (s.set_not_null(table, column), s.drop_constraint(table, check)),
        Q("SELECT ({}) AND ({})").format(done, s.constraint_absent(table, check)),
        (table,),
        superseded_when=superseded_when,
    )


def dual_write_steps(
    b: StepBuilder,
    change: Change,
    table: Table,
    old: str,
    new: str,
    type_: sql.Composable,
    to_new: tuple[sql.Composable, sql.Composable],
    to_old: sql.Composable,
    not_null: bool | None,
    reads: frozenset[str],
    default: tuple[s.Statement, str],
) -> None:
    """The shared shape of rename_column and change_type across all four phases.

    ``to_new`` is the old→new expression twice: for NEW.* in the trigger, and bare for the backfill,
    which reads the columns ``reads``. ``default`` gives the new column its default in contract,
    before the old column goes (:mod:`.column_defaults`), and says which.
    """
    trigger = dual_write.sync_trigger(table, new)
    function = trigger
    b.add(
        "add-column",
        Phase.EXPAND,
        f"add nullable {table}.{new}, with the column privileges, comment, statistics target and"
        f" options {old} has",
        (
            s.add_column(table, new, type_),
            column_carry.carry_column(table, old, new),
        ),
        s.column_exists(table, new),
        (table,),
        locks=f"{table} AccessExclusiveLock (catalog only: the new column, then GRANTs, a comment and"
        " settings on it, which take no more; measured on 15 and 18)",
    )
    if change.dual_write == "trigger":
        b.add(
            "dual-write",
            Phase.EXPAND,
            f"install triggers {trigger} and {dual_write.insert_trigger(trigger)}: keep {old} and {new}"
            " in sync for old and new app writes, converting with this session's TimeZone, DateStyle,"
            " IntervalStyle and search_path whatever the writer's (the backfill takes them too)",
            dual_write.install(table, trigger, function, old, new, to_new[0], to_old),
            dual_write.installed(table, trigger),
            (table,),
            superseded_when=s.column_absent(table, old),
        )
    pending = Q("{} IS DISTINCT FROM ({})").format(sql.Identifier(new), to_new[1])
    pins = (table.schema, function) if change.dual_write == "trigger" else None
    fill = BackfillSpec(table, ((new, to_new[1]),), pending, reads=reads | {new}, pinned_by=pins)
    b.add_backfill(
        f"backfill {table}.{new} from {old} in batches", fill, superseded_when=s.column_absent(table, old)
    )
    if not_null is None:  # as the old column: NOT NULL stays NOT NULL (read when switch runs)
        not_null_steps(
            b,
            Phase.SWITCH,
            table,
            new,
            f" — as {old} is NOT NULL (done at once if it is not)",
            superseded_when=s.column_absent(table, old),
            unless=Q("SELECT NOT ({})").format(s.column_not_null(table, old)),
        )
    elif not_null:
        not_null_steps(b, Phase.SWITCH, table, new)
    # Privileges granted on the old column since expand reach the new one before the old goes.
    carried = (default[0], column_carry.carry_column(table, old, new, settings=False))
    drops: tuple[s.Statement, ...] = (*carried, s.drop_column(table, old))
    what = f"give {new} {old}'s column privileges and {default[1]}, then drop {table}.{old}"
    if change.dual_write == "trigger":
        drops = (*dual_write.drop(table, trigger, function), *drops)
        what = (
            f"drop the dual-write's triggers, give {new} {old}'s column privileges and {default[1]},"
            f" then drop {table}.{old}, in one short transaction"
        )
    b.add(
        "drop-old",
        Phase.CONTRACT,
        what,
        drops,
        s.column_absent(table, old),
        (table,),
        locks=f"{table} AccessExclusiveLock (catalog: the triggers, the default, the GRANTs and the drop)",
    )


def rename_column(change: Change, b: StepBuilder, op: RenameColumn) -> None:
    """A rename as add-new + dual-write + backfill + switch + drop-old, never an in-place RENAME."""
    dual_write_steps(
        b,
        change,
        op.table,
        op.old,
        op.new,
        op.type.sql,
        (Q("NEW.{}").format(sql.Identifier(op.old)), sql.Identifier(op.old)),
        Q("NEW.{}").format(sql.Identifier(op.new)),
        op.not_null,
        frozenset({op.old}),
        (column_defaults.carry_default(op.table, op.old, op.new), f"the default {op.old} has (if any)"),
    )


def change_type(change: Change, b: StepBuilder, op: ChangeType) -> None:
    """A type change through a new column, kept in sync both ways until contract drops the old."""
    dual_write_steps(
        b,
        change,
        op.table,
        op.column,
        op.new_column,
        op.type.sql,
        (op.using.with_row_prefix("new"), op.using.sql),
        op.reverse.with_row_prefix("new"),
        op.not_null,
        op.using.columns,
        (s.set_default(op.table, op.new_column, op.default), f"DEFAULT {op.default.text}")
        if op.default is not None
        else (
            column_defaults.carry_default(op.table, op.column, op.new_column, op.type),
            f"the default {op.column} has (if any), as {op.type.text}",
        ),
    )


def add_not_null_column(b: StepBuilder, op: AddNotNullColumn) -> None:
    """Nullable column (and its default for new rows), backfill, then NOT NULL through a check."""
    b.add(
        "add-column",
        Phase.EXPAND,
        f"add nullable {op.table}.{op.column}" + (" and set its default for new rows" if op.default else ""),
        (
            s.add_column(op.table, op.column, op.type.sql),
            *((s.set_default(op.table, op.column, op.default),) if op.default else ()),
        ),
        s.all_of(
            s.column_exists(op.table, op.column),
            *((s.column_has_default(op.table, op.column),) if op.default else ()),
        ),
        (op.table,),
    )
    pending = Q("{} IS NULL").format(sql.Identifier(op.column))
    fill = BackfillSpec(
        op.table, ((op.column, op.backfill.sql),), pending, reads=op.backfill.columns | {op.column}
    )
    b.add_backfill(f"backfill {op.table}.{op.column} where NULL, in batches", fill)
    if op.default is not None:
        not_null_steps(b, Phase.SWITCH, op.table, op.column)
    else:
        not_null_steps(
            b,
            Phase.CONTRACT,
            op.table,
            op.column,
            " — in contract: without a default the old app's INSERTs would fail",
        )


def change_key_type(change: Change, b: StepBuilder, op: ChangeKeyType) -> None:
    """A key, or a foreign key column that holds one, widened to bigint (GitLab's integer-to-bigint
    conversion, done as one recipe): a shadow column kept in sync and backfilled; in switch, NOT NULL
    proven by a check (where the column is NOT NULL), a unique index built concurrently (a key), each
    foreign key that references the column or goes from it twinned NOT VALID and validated, then one
    short swap transaction (see :mod:`.keyswap`); contract drops the trigger and the old column.

    Every step before the swap is superseded by it: re-running an earlier phase afterwards (the
    key is bigint now, the shadow holds the old values) changes nothing."""
    table, key, shadow = op.table, op.column, op.new_column
    left_to_spec = spec_twins_others(op, change.operations)
    swapped = keyswap.swapped(table, key)
    trigger = dual_write.sync_trigger(table, shadow)
    index = s.derived_name(table.name, shadow, suffix="zdm_key")
    k, n = sql.Identifier(key), sql.Identifier(shadow)
    b.add(
        "add-column",
        Phase.EXPAND,
        f"add nullable {table}.{shadow} {op.type.text}: the key's shadow until the swap",
        s.add_column(table, shadow, op.type.sql),
        s.column_exists(table, shadow),
        (table,),
        superseded_when=swapped,
    )
    b.add(
        "dual-write",
        Phase.EXPAND,
        f"install triggers {trigger} and {dual_write.insert_trigger(trigger)}: every write of {key}"
        f" is copied to {shadow}",
        dual_write.install(
            table, trigger, trigger, key, shadow, Q("NEW.{}").format(k), Q("NEW.{}").format(n)
        ),
        dual_write.installed(table, trigger),
        (table,),
        superseded_when=swapped,
    )
    pending = Q("{} IS DISTINCT FROM {}").format(n, k)
    fill = BackfillSpec(
        table, ((shadow, k),), pending, reads=frozenset({key, shadow}), pinned_by=(table.schema, trigger)
    )
    b.add_backfill(f"backfill {table}.{shadow} from {key} in batches", fill, superseded_when=swapped)
    not_null_steps(
        b,
        Phase.SWITCH,
        table,
        shadow,
        f" — as {key} is NOT NULL (done at once if it is not)",
        superseded_when=swapped,
        unless=Q("SELECT NOT ({})").format(s.column_not_null(table, key)),
    )
    b.add(
        "index",
        Phase.SWITCH,
        f"build unique index {index} on {table}.{shadow} CONCURRENTLY: the key's index after the swap"
        " (a foreign key column that is no key needs none: done at once)",
        s.create_index_concurrently(table, index, s.identifiers((shadow,)), unique=True),
        s.any_of(s.index_valid(table.schema, index), keyswap.not_a_key(table, key)),
        (table,),
        transactional=False,
        builds_index=(table.schema, index),
        long_running=True,
        superseded_when=swapped,
    )
    b.add(
        "index-twins",
        Phase.SWITCH,
        f"twin each index on {table}.{key} (in its columns, an expression or its predicate) on {shadow},"
        " CONCURRENTLY, one by one (which: read from the catalog when switch runs; on a partitioned"
        " table: ON ONLY, each partition CONCURRENTLY, ATTACH); the swap gives each twin, and each"
        " partition's, its original's name",
        index_twins.column_indexes(table, key, shadow, left_to_spec),
        index_twins.all_twinned(table, key, shadow, left_to_spec),
        (table,),
        transactional=False,
        long_running=True,
        superseded_when=swapped,
        twins=(table, key, shadow, left_to_spec),
        locks=f"{table} ShareUpdateExclusiveLock per build (CONCURRENTLY: reads and writes go on)",
    )
    b.add(
        "fk-twins",
        Phase.SWITCH,
        f"re-create each foreign key referencing {table}.{key}, or going from it, on {shadow}'s side,"
        " NOT VALID (no scan)",
        fk_twins.add_replacement_fks(table, key, shadow),
        fk_twins.replacements_done(table, key, validated=False),
        (table,),
        superseded_when=swapped,
        locks=f"each table {table}.{key} references, {table} and each referencing table"
        " ShareRowExclusiveLock (catalog: NOT VALID, no scan)",
    )
    b.add(
        "fk-validate",
        Phase.SWITCH,
        "VALIDATE those foreign keys (scans each child under SHARE UPDATE EXCLUSIVE only)",
        fk_twins.validate_replacement_fks(table, key, shadow),
        fk_twins.replacements_done(table, key, validated=True),
        (table,),
        long_running=True,
        superseded_when=swapped,
        locks=f"each referencing table ShareUpdateExclusiveLock (scan), {table} RowShareLock; for {key}'s"
        f" own foreign keys, {table} ShareUpdateExclusiveLock, the tables they reference RowShareLock:"
        " reads and writes go on",
    )
    b.add(
        "fk-attach",
        Phase.SWITCH,
        "PostgreSQL before 18: add each partitioned table's twin, valid (a referencing table's, or the"
        " column's own where its table is partitioned); it attaches the partitions' validated twins, no"
        " scan (18 and later: nothing to do)",
        fk_twins.attach_replacement_fks(table, key, shadow),
        fk_twins.replacements_done(table, key, validated=True),
        (table,),
        superseded_when=swapped,
        locks=f"before 18, where a partitioned table references the key: {table} AccessExclusiveLock (the"
        " partitions' own triggers on it are dropped), then each referencing table and its partitions"
        f" ShareRowExclusiveLock; where {table} is partitioned and {key} holds a key: each table it"
        f" references AccessExclusiveLock, then {table} and its partitions ShareRowExclusiveLock"
        " (catalog: attaches validated twins, no scan); otherwise none",
    )
    b.add(
        "swap",
        Phase.SWITCH,
        f"swap {key} and {shadow} in one short transaction (locks the tables {key} references, {table},"
        f" then its referencing tables, by name): foreign keys, key constraint, sequence or identity,"
        f" column privileges move to the bigint {key};"
        f" {trigger} now keeps the old column, {shadow}, in sync",
        (
            keyswap.swap(table, key, shadow, s.derived_name(key, suffix="zdm_swap"), index),
            dual_write.shadow_sync_function(table, trigger, key, shadow),
            dual_write.shadow_sync_trigger(table, trigger, key),
        ),
        swapped,
        (table,),
        locks=f"each table {key} references, then {table}, then each referencing table, sorted by name,"
        " AccessExclusiveLock (catalog only:"
        " renames, constraint moves, USING INDEX; no scan, no rewrite), for the swap's transaction",
    )
    b.add(
        "drop-old",
        Phase.CONTRACT,
        f"drop the dual-write's triggers and {table}.{shadow} (the old {key}) together, in one short"
        " transaction",
        (*dual_write.drop(table, trigger, trigger), s.drop_column(table, shadow)),
        s.column_absent(table, shadow),
        (table,),
    )

"""The dual-write triggers: an old and a new column kept equal while both app versions write.

A trigger function in PL/pgSQL costs a call per row it fires on, whether or not it changes
anything. Fired on every UPDATE (as GitLab's rename triggers are, ``BEFORE INSERT OR UPDATE``
with no condition), it taxes each app write to any column of the table for the whole change, and
each row the backfill writes: the backfill sets the new column to exactly what the function
would compute, so the call does nothing but cost.

So the UPDATE trigger carries a ``WHEN`` condition, which PostgreSQL checks before it calls the
function: exactly the cases in which the function's UPDATE branch changes the row
(:func:`changes`). An app's update of other columns and the backfill's own writes never call it.
A ``WHEN`` cannot read ``OLD`` on INSERT, so inserts have a trigger of their own, on the same
function, without one. Measured with ``bench/dual_write.py`` (1,000,000 rows on 18, 300,000 on
15, against no trigger at all): an app's update of another column took 1.23 to 1.55x the CPU per
row with the call on every row, 0.97 to 1.21x with the condition; the backfill ran at 0.56 to
0.77x the rows/s with the call, 0.74 to 0.91x with the condition.

**The same value in every session.** A conversion such as ``at::timestamptz`` reads the session's
``TimeZone``: measured on 18, an app session in ``America/New_York`` had the trigger store 13:00
UTC for 09:00 while the backfill, in UTC, stored 09:00 UTC for the rows it wrote (and rewrote the
app's), and switch and contract went through with both. So the function runs with the settings
that a value's conversion can read (:data:`PINNED`) as they were in the session that installed
it (``SET … FROM CURRENT``), whatever the calling session's; the backfill's session takes the
same values from the function (:mod:`zdm_runbook.execute.pinned`). The ``WHEN`` is evaluated in
the caller's session, not the function's, so for the app's writes of the new column it leaves
the comparison to the function; only zdm's own sessions, which run with the pinned values, skip
the call on a row whose new column already agrees.
"""

from __future__ import annotations

from psycopg import sql

from zdm_runbook.plan.steps import DOLLAR_TAG, all_of, derived_name, qname, trigger_exists
from zdm_runbook.spec.model import Table

Q = sql.SQL
# What a conversion's value may read from the session: the zone, the date and interval formats,
# and where unqualified names resolve. Each costs the function about a microsecond per call
# (measured on 18: 200,000 inserts, 1.4 to 1.6 µs per row with the trigger, 2.2 to 2.6 with these).
PINNED = ("TimeZone", "DateStyle", "IntervalStyle", "search_path")
_PINS = Q(" ").join(Q("SET {} FROM CURRENT").format(sql.Identifier(name)) for name in PINNED)


def sync_trigger(table: Table, column: str) -> str:
    """The name of the UPDATE trigger (and of its function) that syncs ``column`` of ``table``."""
    return derived_name("zdm", table.name, column, suffix="sync")


def insert_trigger(trigger: str) -> str:
    """The name of the INSERT trigger beside the UPDATE trigger ``trigger``."""
    return derived_name(trigger, suffix="insert")


def sync_function(
    table: Table,
    function: str,
    old: str,
    new: str,
    to_new: sql.Composable,
    to_old: sql.Composable,
) -> sql.Composed:
    """A trigger function keeping ``old`` and ``new`` equal both ways.

    Old app writes only ``old`` → ``new`` is computed; new app writes only ``new`` → ``old`` is
    computed. A write of ``new`` that already agrees with ``old`` (the backfill) leaves ``old``
    untouched, so a lossy reverse conversion never rewrites the original data.
    """
    o, n = sql.Identifier(old), sql.Identifier(new)
    body = Q(
        "\nBEGIN\n"
        "  IF TG_OP = 'INSERT' THEN\n"
        "    IF NEW.{n} IS NULL AND NEW.{o} IS NOT NULL THEN\n"
        "      NEW.{n} := {to_new};\n"
        "    ELSIF NEW.{o} IS NULL AND NEW.{n} IS NOT NULL THEN\n"
        "      NEW.{o} := {to_old};\n"
        "    END IF;\n"
        "  ELSIF NEW.{o} IS DISTINCT FROM OLD.{o} AND NEW.{n} IS NOT DISTINCT FROM OLD.{n} THEN\n"
        "    NEW.{n} := {to_new};\n"
        "  ELSIF NEW.{n} IS DISTINCT FROM OLD.{n} AND NEW.{o} IS NOT DISTINCT FROM OLD.{o}\n"
        "        AND NEW.{n} IS DISTINCT FROM ({to_new}) THEN\n"
        "    NEW.{o} := {to_old};\n"
        "  END IF;\n"
        "  RETURN NEW;\n"
        "END\n"
    ).format(o=o, n=n, to_new=to_new, to_old=to_old)
    return Q("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql {} AS {tag}{}{tag}").format(
        sql.Identifier(table.schema, function), _PINS, body, tag=Q(DOLLAR_TAG)
    )


def changes(old: str, new: str, to_new: sql.Composable) -> sql.Composed:
    """When :func:`sync_function`'s UPDATE branch may change a row: ``old`` written, or ``new``
    written by the app, or by zdm with a value that ``old`` does not convert to. Everything else
    (another column written, or ``new`` set to exactly ``old``'s conversion, as the backfill
    sets it, with the function's settings) passes."""
    o, n = sql.Identifier(old), sql.Identifier(new)
    return Q(
        "NEW.{o} IS DISTINCT FROM OLD.{o} OR (NEW.{n} IS DISTINCT FROM OLD.{n}"
        " AND (current_setting('application_name') NOT LIKE 'zdm\\_runbook%'"
        " OR NEW.{n} IS DISTINCT FROM ({to_new})))"
    ).format(o=o, n=n, to_new=to_new)


def update_trigger(table: Table, trigger: str, function: str, when: sql.Composable) -> sql.Composed:
    """The UPDATE trigger, calling ``function`` only on rows where ``when`` holds."""
    return Q(
        "CREATE OR REPLACE TRIGGER {} BEFORE UPDATE ON {} FOR EACH ROW WHEN ({}) EXECUTE FUNCTION {}()"
    ).format(sql.Identifier(trigger), qname(table), when, sql.Identifier(table.schema, function))


def install(
    table: Table,
    trigger: str,
    function: str,
    old: str,
    new: str,
    to_new: sql.Composable,
    to_old: sql.Composable,
) -> tuple[sql.Composed, ...]:
    """The dual-write's statements: :func:`sync_function`, the UPDATE trigger ``trigger`` calling
    it only when it :func:`changes` a row (replacing one of the same name, as an earlier version's
    single ``INSERT OR UPDATE`` trigger), and the INSERT trigger beside it."""
    return (
        sync_function(table, function, old, new, to_new, to_old),
        update_trigger(table, trigger, function, changes(old, new, to_new)),
        Q("CREATE OR REPLACE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(insert_trigger(trigger)), qname(table), sql.Identifier(table.schema, function)
        ),
    )


def installed(table: Table, trigger: str) -> sql.Composed:
    """Both triggers exist (an earlier version's single trigger is not done: it is replaced)."""
    return all_of(trigger_exists(table, trigger), trigger_exists(table, insert_trigger(trigger)))


def drop(table: Table, trigger: str, function: str) -> tuple[sql.Composed, ...]:
    """Both triggers, then their function."""
    return (
        Q("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), qname(table)),
        Q("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(insert_trigger(trigger)), qname(table)),
        Q("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(table.schema, function)),
    )


def shadow_sync_function(table: Table, function: str, key: str, shadow: str) -> sql.Composed:
    """After the swap: ``shadow`` (the old, narrower column) follows ``key`` on every write, so the
    old shape survives the deploy cycle; a value past its range leaves it NULL, never an error.

    The swap moved the column's position: an INSERT without a column list (``INSERT INTO t VALUES
    (…)``, in the table's order) now writes the old app's value into ``shadow``, and ``key`` gets
    NULL or its default. Nobody names ``shadow``, so an INSERT that sets it is such a write: its
    value becomes the key's (measured: without this, the holder's NOT NULL failed, and a key took
    the sequence's value instead of the one the app gave)."""
    body = Q(
        "\nBEGIN\n"
        "  IF TG_OP = 'INSERT' AND NEW.{n} IS NOT NULL THEN\n"
        "    NEW.{k} := NEW.{n};\n"
        "  ELSIF TG_OP = 'INSERT' OR NEW.{k} IS DISTINCT FROM OLD.{k} THEN\n"
        "    BEGIN\n"
        "      NEW.{n} := NEW.{k};\n"
        "    EXCEPTION WHEN numeric_value_out_of_range THEN\n"
        "      NEW.{n} := NULL;\n"
        "    END;\n"
        "  END IF;\n"
        "  RETURN NEW;\n"
        "END\n"
    ).format(k=sql.Identifier(key), n=sql.Identifier(shadow))
    return Q("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {tag}{}{tag}").format(
        sql.Identifier(table.schema, function), body, tag=Q(DOLLAR_TAG)
    )


def shadow_sync_trigger(table: Table, trigger: str, key: str) -> sql.Composed:
    """After the swap the UPDATE trigger fires only where ``key`` is written. The condition
    installed before the swap follows the columns, not their names, and no longer describes
    what :func:`shadow_sync_function` does."""
    return update_trigger(
        table, trigger, trigger, Q("NEW.{k} IS DISTINCT FROM OLD.{k}").format(k=sql.Identifier(key))
    )

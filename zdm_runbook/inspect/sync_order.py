"""The app's BEFORE triggers that fire after zdm's sync trigger: what they write is not synced.

PostgreSQL fires the BEFORE triggers of one event in the order of their names. The dual-write
trigger copies one column to the other as the row stands when it fires; a later trigger that
changes either column changes it alone. Measured on 18: with the app's ``zz_lower_email``
(``NEW.email := lower(NEW.email)``) beside ``rename_column`` email → mail, an insert of
``NEW@X.ORG`` stored ``email = new@x.org`` and ``mail = NEW@X.ORG``. The backfill puts right the
rows it finds different, but a row written after it stays so until contract drops the old column.
So each enabled row-level BEFORE INSERT or UPDATE trigger whose name sorts after zdm's is named,
from the first phase on, with the way out: a name that sorts before it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import psycopg

from zdm_runbook.inspect.preflight import Reason
from zdm_runbook.plan.dual_write import insert_trigger, sync_trigger
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.operations import ChangeKeyType, Operation
from zdm_runbook.spec.replaced_columns import replaced_columns

# Row-level BEFORE triggers on INSERT (type bit 4) after the insert sync trigger, or on UPDATE
# (16) after the update one, by name as PostgreSQL orders them (byte by byte: COLLATE "C").
_LATER = """
SELECT t.tgname::text, t.tgfoid::regprocedure::text
  FROM pg_trigger t
 WHERE t.tgrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(name)s::text))
   AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A')
   AND t.tgtype & 1 = 1 AND t.tgtype & 2 = 2
   AND ((t.tgtype & 4 = 4 AND t.tgname::text COLLATE "C" > %(insert)s::text COLLATE "C")
     OR (t.tgtype & 16 = 16 AND t.tgname::text COLLATE "C" > %(update)s::text COLLATE "C"))
   AND t.tgname::text NOT LIKE 'zdm\\_%%'
 ORDER BY 1
"""
COLUMNS = ("table", "trigger", "function", "fires after")


def _synced(operations: tuple[Operation, ...], dual_write: str) -> list[tuple[Table, str, str, str]]:
    """``(table, old, new, sync trigger)`` for each column pair a trigger keeps in sync, in the
    spec's order: a key's swap has its trigger whatever ``dual_write`` says; a replaced column
    (rename_column, change_type) has one under ``dual_write: trigger``."""
    pairs = []
    for op in operations:
        if isinstance(op, ChangeKeyType):
            pairs.append((op.table, op.column, op.new_column))
        elif dual_write == "trigger":
            pairs += replaced_columns((op,))
    return [(table, old, new, sync_trigger(table, new)) for table, old, new in pairs]


def later_triggers(
    conn: psycopg.Connection[Any], operations: tuple[Operation, ...], dual_write: str = "trigger"
) -> tuple[list[Reason], pd.DataFrame]:
    """A warning per app trigger that fires after a sync trigger of the change; the rows."""
    reasons: list[Reason] = []
    rows: list[tuple[str, str, str, str]] = []
    for table, old, new, sync in _synced(operations, dual_write):
        names = {"schema": table.schema, "name": table.name, "insert": insert_trigger(sync), "update": sync}
        for name, function in conn.execute(_LATER, names).fetchall():
            rows.append((str(table), str(name), str(function), sync))
            reasons.append(
                Reason(
                    "warn",
                    f"{table}: the app's trigger {name} ({function}) fires after zdm's {sync}, BEFORE"
                    f" triggers firing in name order: what it writes to {old} or {new} is not copied to"
                    f" the other (measured: a trigger lowercasing email left mail as written). Give it a"
                    f" name that sorts before {sync} (ALTER TRIGGER {name} ON {table} RENAME TO …), or"
                    " make sure it writes neither column",
                )
            )
    return reasons, pd.DataFrame(rows, columns=list(COLUMNS))

"""What each row a backfill updates sets off, said before the backfill runs: the app's own UPDATE
triggers, and the publications that send every updated row to their subscribers.

A backfill is an UPDATE of every row, in batches, so each row-level UPDATE trigger on the table fires
once per row: measured on 18, a ``BEFORE UPDATE`` trigger that sets ``updated_at = now()`` set it on
all 5,000 rows of a backfilled table, and an ``AFTER UPDATE`` audit trigger wrote 5,000 audit rows.
A trigger limited to other columns (``UPDATE OF customer_id``) does not fire, nor one disabled
or firing only on a replica. The recipes' own ``zdm_`` triggers are left out, and so is one whose
WHEN or function already names ``zdm_runbook`` (below): the warning goes once it is dealt with.

The backfill connects as ``application_name = zdm_runbook:migrate``. A trigger that should not
see it can say so, measured to work both ways: ``WHEN (current_setting('application_name') NOT LIKE
'zdm_runbook%')`` on the trigger, or ``IF current_setting('application_name') LIKE 'zdm_runbook%'
THEN RETURN NEW; END IF;`` first in its function. Whether it should is the DBA's call: an audit trail
may want the backfill's row versions; an ``updated_at`` that feeds an export usually does not.

A publication that publishes UPDATEs of the table (by name, by its schema, or FOR ALL TABLES) sends
every backfilled row to its subscribers as an update they apply, and a logical slot keeps the WAL
until they have (measured with a ``test_decoding`` slot on 15: one UPDATE per backfilled row).
Nothing in zdm can leave the backfill out of a publication; the warning lets the DBA tell the
subscribers' owners (a CDC pipeline, a search index) before, or choose the hour.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
import psycopg

from zdm_runbook.inspect.preflight import Reason
from zdm_runbook.plan.steps import BackfillSpec
from zdm_runbook.spec.model import Table

_TRIGGERS = """
SELECT t.tgname::text AS name,
       CASE WHEN t.tgtype & 2 <> 0 THEN 'BEFORE' ELSE 'AFTER' END AS timing,
       t.tgfoid::regprocedure::text AS function,
       t.tgqual IS NOT NULL AS has_when
  FROM pg_trigger t
 WHERE t.tgrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(name)s::text))
   AND NOT t.tgisinternal
   AND t.tgenabled IN ('O', 'A')  -- fires on a primary ('R': on a replica only; 'D': never)
   AND t.tgtype & 1 = 1           -- FOR EACH ROW
   AND t.tgtype & 16 = 16         -- on UPDATE
   AND t.tgname NOT LIKE 'zdm\\_%%'
   AND pg_get_triggerdef(t.oid) NOT LIKE '%%zdm\\_runbook%%'  -- told to leave the backfill alone,
   AND (SELECT p.prosrc FROM pg_proc p WHERE p.oid = t.tgfoid) NOT LIKE '%%zdm\\_runbook%%'  -- either way
   AND (cardinality(t.tgattr::int2[]) = 0 OR EXISTS (
        SELECT 1 FROM pg_attribute a
         WHERE a.attrelid = t.tgrelid AND a.attnum = ANY (t.tgattr::int2[])
           AND a.attname = ANY (%(columns)s::text[])))
 ORDER BY 1
"""
_PUBLICATIONS = """
SELECT p.pubname::text, (SELECT count(*) FROM pg_replication_slots s
                          WHERE s.slot_type = 'logical' AND s.database = current_database())
  FROM pg_publication p JOIN pg_publication_tables t ON t.pubname = p.pubname
 WHERE p.pubupdate AND t.schemaname = %(schema)s::text AND t.tablename = %(name)s::text
 ORDER BY 1
"""
COLUMNS = ("table", "what", "fires", "how")


def fanout_warnings(
    conn: psycopg.Connection[Any], backfills: Iterable[BackfillSpec]
) -> tuple[list[Reason], pd.DataFrame]:
    """A warning per table whose row-level UPDATE triggers fire on the backfill's updates, and one
    per table a publication sends the updates of, naming each; and the rows to show them in."""
    writes: dict[Table, set[str]] = {}
    for b in backfills:
        writes.setdefault(b.table, set()).update(b.writes)
    reasons: list[Reason] = []
    rows: list[tuple[str, str, str, str]] = []
    for table, columns in sorted(writes.items(), key=lambda item: str(item[0])):
        published = conn.execute(_PUBLICATIONS, {"schema": table.schema, "name": table.name}).fetchall()
        if published:
            slots = int(published[0][1])
            names = ", ".join(name for name, _ in published)
            rows += [
                (str(table), f"publication {name}", "each updated row", "sent to its subscribers")
                for name, _ in published
            ]
            reasons.append(
                Reason(
                    "warn",
                    f"{table} is published for UPDATE ({names}; {slots} logical slot(s) on this database):"
                    " every row the backfill updates goes to the subscribers as an update they apply, and"
                    " a slot keeps the WAL until they have. Tell their owners (CDC, a search index), or"
                    " choose the hour",
                )
            )
        found = conn.execute(
            _TRIGGERS, {"schema": table.schema, "name": table.name, "columns": sorted(columns)}
        ).fetchall()
        if not found:
            continue
        rows += [
            (str(table), f"trigger {name}", f"{timing} UPDATE" + (" (WHEN …)" if has_when else ""), function)
            for name, timing, function, has_when in found
        ]
        named = ", ".join(f"{name} ({timing} UPDATE, {function})" for name, timing, function, _ in found)
        reasons.append(
            Reason(
                "warn",
                f"{table}: {named} fire{'s' if len(found) == 1 else ''} on every row the backfill updates:"
                " what a trigger does to a row it does to all of them (an updated_at set to now(), an audit"
                " row written per row). To have one leave zdm's backfill alone: WHEN"
                " (current_setting('application_name') NOT LIKE 'zdm_runbook%') on the trigger, or IF"
                " current_setting('application_name') LIKE 'zdm_runbook%' THEN RETURN NEW; END IF; first in"
                " its function",
            )
        )
    return reasons, pd.DataFrame(rows, columns=list(COLUMNS))

"""What a change's DDL does to the subscribers of the tables it alters: said before it runs.

Logical replication carries rows, not DDL. Measured on 15 (a publication of ``orders``, a
subscription in another database of the server): after ``ALTER TABLE orders ADD COLUMN w int`` on
the publisher, the subscriber's apply worker stopped at the next insert, ``logical replication
target relation "public.orders" is missing replicated column: "w"``, and retried in a loop, its
slot keeping the WAL, until the column was added on the subscriber; then it caught up. A table the
publisher renames arrives under its new name, and a ``FOR ALL TABLES`` publication publishes every
table created later, zdm's own ledger (schema ``zdm``) included: measured with a new table, the
subscriber stopped at its first row with ``logical replication target relation … does not
exist``. So each table the change adds a column to, renames, or whose key it swaps, if a
publication publishes it, is named with what its subscribers need first. A CDC reader (Debezium
and the like) follows new columns by itself; a PostgreSQL subscriber does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
import psycopg

from zdm_runbook.inspect.preflight import Reason
from zdm_runbook.spec.model import Table
from zdm_runbook.spec.operations import ChangeKeyType, Operation, RenameTable, created_names

_PUBLISHED = """
SELECT p.pubname::text, p.puballtables,
       (SELECT count(*) FROM pg_replication_slots s WHERE s.slot_type = 'logical'
           AND s.database = current_database())
  FROM pg_publication p JOIN pg_publication_tables t ON t.pubname = p.pubname
 WHERE t.schemaname = %(schema)s::text AND t.tablename = %(name)s::text
 ORDER BY 1
"""
COLUMNS = ("table", "publication", "subscribers need first")


def _needs(operations: Iterable[Operation]) -> dict[Table, list[str]]:
    """Per table the change alters: what a subscriber must have before the change reaches it."""
    needs: dict[Table, list[str]] = {}
    for op in operations:
        for name in created_names(op):
            if name[0] == "column":
                needs.setdefault(Table(name[1], name[2]), []).append(f"column {name[3]} (expand)")
        if isinstance(op, RenameTable):
            needs.setdefault(op.table, []).append(f"the name {op.new}: changes arrive under it (expand)")
        if isinstance(op, ChangeKeyType):
            needs.setdefault(op.table, []).append(
                f"{op.column} widened too: the swap gives the name {op.column} to the {op.type.text} column"
                " (switch)"
            )
    return needs


def published_ddl(
    conn: psycopg.Connection[Any], operations: Iterable[Operation]
) -> tuple[list[Reason], pd.DataFrame]:
    """A warning per table the change alters that a publication publishes; the rows to show."""
    reasons: list[Reason] = []
    rows: list[tuple[str, str, str]] = []
    for table, needs in sorted(_needs(operations).items(), key=lambda item: str(item[0])):
        found = conn.execute(_PUBLISHED, {"schema": table.schema, "name": table.name}).fetchall()
        if not found:
            continue
        names = ", ".join(f"{name}{' (FOR ALL TABLES)' if every else ''}" for name, every, _ in found)
        rows += [(str(table), str(name), "; ".join(needs)) for name, _, _ in found]
        text = (
            f"{table} is published ({names}; {int(found[0][2])} logical slot(s) on this database):"
            " logical replication carries no DDL, and a PostgreSQL subscriber's apply stops at the first"
            " change it cannot place (measured on 15: 'is missing replicated column'), its slot keeping"
            f" the WAL until it can. On each subscriber, before the phase named: {'; '.join(needs)}"
        )
        if any(every for _, every, _ in found):
            text += (
                ". A FOR ALL TABLES publication also publishes zdm's ledger (schema zdm), which the first"
                " run creates: give its subscribers the same tables (pg_dump --schema-only --schema zdm)"
            )
        reasons.append(Reason("warn", text))
    return reasons, pd.DataFrame(rows, columns=list(COLUMNS))

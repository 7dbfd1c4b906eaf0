"""The ledger a first run would create where a ``FOR ALL TABLES`` publication would publish it.

A ``FOR ALL TABLES`` publication publishes every table created after it, and a PostgreSQL
subscriber that lacks one stops at its first row: measured on 15 with a table created after the
subscription, ``logical replication target relation … does not exist``, the apply worker retrying
while its slot kept the WAL. The ledger (schema ``zdm``) is such a table, written before any
preflight could warn. So a run that would create it there, while a logical slot reads this
database, is refused first (bad input, exit 2), with the way through: pause the subscriptions,
run, give them the ledger's tables (``pg_dump --schema-only --schema zdm`` of this database), resume;
or, for a reader such as Debezium, which follows new tables by itself, say so with
``ledger_published``. Once the ledger exists, nothing is asked again.
"""

from __future__ import annotations

from typing import Any

import psycopg

from zdm_runbook.core.errors import ConfigError

_WOULD_PUBLISH = """
SELECT to_regclass('zdm.schema_version') IS NULL,
       (SELECT string_agg(pubname::text, ', ' ORDER BY pubname) FROM pg_publication WHERE puballtables),
       (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'
           AND database = current_database())
"""


def refuse_published_ledger(conn: psycopg.Connection[Any], allowed: bool) -> None:
    """Raise :class:`ConfigError` when creating the ledger now would publish it to a reader."""
    row = conn.execute(_WOULD_PUBLISH).fetchone()
    if allowed or row is None or not row[0] or not row[1] or not row[2]:
        return
    raise ConfigError(
        f"publication {row[1]} publishes FOR ALL TABLES, and {row[2]} logical slot(s) read this"
        " database: the ledger this first run would create (schema zdm) would be published too, and a"
        " PostgreSQL subscriber without its tables stops applying at its first row, its slot keeping"
        " the WAL. Nothing was created. Pause each such subscription (ALTER SUBSCRIPTION … DISABLE),"
        " re-run with -p ledger_published true, give the subscribers the ledger's tables (pg_dump"
        " --schema-only --schema zdm of this database), and enable them again; for a reader that"
        " follows new tables by itself (Debezium), -p ledger_published true is all"
    )

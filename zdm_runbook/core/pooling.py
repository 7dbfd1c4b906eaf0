"""Refusing a transaction-pooled connection (PgBouncer ``pool_mode = transaction`` and the like).

A run holds a session advisory lock on its change from start to end, sets session state, and lets
psycopg prepare statements on its connection. Through a transaction pooler none of that belongs to
the run: the lock stays on a pooled server connection after the client has gone (the next phase is
refused as "being run right now"), and another client's prepared statement collides with ours
(``DuplicatePreparedStatement``). So a run refuses such a connection before anything runs.

The evidence is PostgreSQL's own: two client connections that are open at the same time are two
server backends under a direct connection or a session pooler, always. A transaction pooler hands
each transaction the server connection it has free, so two of our connections, used one after
the other, show the same ``pg_backend_pid()`` (or one connection shows two). No pooler-specific
command is needed, so PgBouncer, Odyssey, pgcat or a cloud proxy are all caught the same way.
"""

from __future__ import annotations

from typing import Any

import psycopg

from zdm_runbook.core.connect import connect, describe
from zdm_runbook.core.errors import ConfigError

Conn = psycopg.Connection[Any]


def _pid(conn: Conn) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return int(row[0]) if row else 0


def shared_backend(first: Conn, second: Conn) -> str | None:
    """Evidence that ``first`` and ``second`` (open at once, autocommit) do not each own a backend."""
    a1 = _pid(first)
    b = _pid(second)
    a2 = _pid(first)
    if a1 == b:
        return f"two connections ran on one server backend (pid {a1})"
    if a1 != a2:
        return f"one connection ran on two server backends (pids {a1} and {a2})"
    return None


def pooling_error(conninfo: str, evidence: str) -> ConfigError:
    return ConfigError(
        f"{describe(conninfo)} goes through a transaction-pooling proxy: {evidence}. A zdm-runbook"
        " run holds a session advisory lock on its change, session settings and prepared statements"
        " for its whole length, and none of them survive transaction pooling. Connect to PostgreSQL"
        " directly, or through a pool in session mode (PgBouncer: pool_mode = session, for example a"
        " second [databases] entry for migrations)."
    )


def refuse_transaction_pooling(conninfo: str) -> None:
    """Raise :class:`ConfigError` (bad input, exit 2) when ``conninfo`` is transaction-pooled."""
    with (
        connect(conninfo, phase="pooling-check", autocommit=True) as first,
        connect(conninfo, phase="pooling-check", autocommit=True) as second,
    ):
        evidence = shared_backend(first, second)
    if evidence:
        raise pooling_error(conninfo, evidence)

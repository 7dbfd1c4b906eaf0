"""A fleet's target: an Airflow connection id, its DSN (resolved only where it is used) and its gate.

Nothing here imports Airflow: a connection's fields come in as a mapping, so the rules (which
connection types are PostgreSQL, which extras are libpq's, what the archive folder is called) are
checked without a scheduler. The DSN travels to the notebook only through :data:`DSN_ENV`.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from zdm_runbook.core.connect import remember_secret
from zdm_runbook.core.errors import ConfigError
from zdm_runbook.ledger.gates import Gate, check_gate
from zdm_runbook.ledger.runs import failed_sqlstate
from zdm_runbook.ledger.signoffs import phase_state
from zdm_runbook.ledger.status import changes, ledger_ready
from zdm_runbook.spec.model import Phase

# The variable that carries a target's DSN from the fleet task to its notebook's kernel.
DSN_ENV = "ZDM_FLEET_DSN"
POSTGRES_TYPES = frozenset({"postgres", "postgresql"})
# Airflow connection ids become archive folder names: letters, digits, '_', '-', '.'.
_CONN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")
# libpq's own keywords; an Airflow connection's other extras (the provider's cursor, iam, ...) are
# not for the server and are left out.
_LIBPQ = frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())
_SET_HERE = frozenset({"host", "port", "user", "password", "dbname", "application_name"})


def check_conn_id(conn_id: str) -> str:
    """``conn_id`` if it can name a target (and its archive folder); else :class:`ConfigError`."""
    if not isinstance(conn_id, str) or not _CONN_ID.match(conn_id) or conn_id in (".", ".."):
        raise ConfigError(
            f"target {conn_id!r}: an Airflow connection id of letters, digits, '_', '-' and '.'"
            " (it also names the target's archive folder)"
        )
    return conn_id


def conninfo_of(conn_id: str, fields: Mapping[str, Any]) -> str:
    """The libpq conninfo of an Airflow connection, given its fields.

    ``fields``: ``conn_type``, ``host``, ``port``, ``login``, ``password``, ``schema`` (the
    database, as Airflow's Postgres connection calls it) and ``extra`` (a mapping; libpq keywords
    such as ``sslmode`` are kept). The password is remembered so that :func:`redact` masks it in
    any text this process prints. Errors name the connection and the field, never the password.
    """
    kind = str(fields.get("conn_type") or "")
    if kind not in POSTGRES_TYPES:
        raise ConfigError(f"target {conn_id}: conn_type is {kind or 'empty'!r}, not 'postgres'")
    extra = fields.get("extra") or {}
    if not isinstance(extra, Mapping):
        raise ConfigError(f"target {conn_id}: extra is not a JSON object")
    params: dict[str, Any] = {k: v for k, v in extra.items() if k in _LIBPQ and k not in _SET_HERE}
    for key, name in (("host", "host"), ("port", "port"), ("login", "user"), ("schema", "dbname")):
        if fields.get(key) not in (None, ""):
            params[name] = fields[key]
    if fields.get("password"):
        params["password"] = fields["password"]
    dsn = make_conninfo("", **params)  # only libpq's keywords are left: values are checked on connect
    remember_secret(dsn)
    return dsn


@contextmanager
def dsn_in_env(dsn: str) -> Iterator[str]:
    """Put ``dsn`` in :data:`DSN_ENV` for the duration (the notebook's kernel inherits it), then
    restore what was there; yields the variable's name, which is all a parameter ever holds."""
    before = os.environ.get(DSN_ENV)
    os.environ[DSN_ENV] = dsn
    try:
        yield DSN_ENV
    finally:
        if before is None:
            os.environ.pop(DSN_ENV, None)
        else:
            os.environ[DSN_ENV] = before


def archive_of(archive: Path, conn_id: str) -> Path:
    """A target's archive folder: ``ARCHIVE/<target>``; ``zdm run`` adds ``<change>/<phase>-<UTC>``."""
    return Path(archive) / check_conn_id(conn_id)


def read_gate(
    dsn: str,
    change_id: str,
    phase: Phase | str,
    *,
    deploy_cycle_s: float,
    deploy_cycle_override: str | None = None,
) -> Gate:
    """The gate of ``phase`` in one target's ledger; a database where no phase of the change has run
    is closed for every phase but expand (not a wait: nothing there will open it by itself)."""
    p = Phase(phase)
    if p == Phase.EXPAND:
        return Gate(p.value, True)
    with psycopg.connect(dsn, autocommit=True, application_name="zdm_runbook fleet") as conn:
        if not ledger_ready(conn) or not changes(conn, change_id):
            return Gate(p.value, False, [f"no phase of {change_id} has run in this database yet"])
        return check_gate(
            conn,
            change_id,
            p,
            deploy_cycle_s=deploy_cycle_s,
            deploy_cycle_override=deploy_cycle_override,
        )


def why_not_complete(dsn: str, change_id: str, phase: Phase | str) -> str | None:
    """None when ``phase`` of the change is complete in this target's ledger; else why not."""
    p = Phase(phase)
    with psycopg.connect(dsn, autocommit=True, application_name="zdm_runbook fleet") as conn:
        if not ledger_ready(conn) or not changes(conn, change_id):
            return f"no phase of {change_id} has run in this database"
        state = phase_state(conn, change_id, p)
        if state.complete:
            return None
        return state.why_not() if state.ran else f"{p.value} has not run here (the target stopped before it)"


def last_failure(dsn: str, run_id: str) -> str | None:
    """The SQLSTATE of the latest failed step attempt of the phase run ``run_id`` (None: none)."""
    with psycopg.connect(dsn, autocommit=True, application_name="zdm_runbook fleet") as conn:
        if not ledger_ready(conn):
            return None
        return failed_sqlstate(conn, uuid.UUID(run_id))

"""A shadow of a live database's schema: a scratch database on the same server, with no rows.

``pg_dump --schema-only`` of the live database (types, domains, defaults, constraints, indexes,
partitions, functions, triggers, views: everything the server can describe) is restored into a
new database that is dropped afterwards. The probe runs a migration there for real. The live
relations are only read the way ``pg_dump`` reads them (ACCESS SHARE, for the length of the dump,
with ``--lock-wait-timeout``), never changed.

It needs the right to create a database. Where that (or ``pg_dump``) is missing, :func:`shadow`
yields None and says why, and the linter falls back to its rules and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from zdm_runbook.core.connect import redact
from zdm_runbook.core.errors import EmbeddedServerError
from zdm_runbook.core.pgbin import embedded_bin_dir

Conn = psycopg.Connection[Any]
DUMP_TIMEOUT_S = 120


@dataclass
class Shadow:
    """A scratch copy's DSN, or why there is none. The DSN carries the live connection's password
    (for connections made in this process): it is never shown (``repr`` leaves it out)."""

    dsn: str | None = field(repr=False)
    why_not: str = ""


def _program(name: str) -> str | None:
    try:
        bundled = embedded_bin_dir() / name
    except EmbeddedServerError:
        bundled = Path("/nonexistent")
    return str(bundled) if bundled.exists() else shutil.which(name)


def _env(conn: Conn) -> tuple[str, dict[str, str]]:
    """The live connection as a conninfo without its password, and an environment carrying it."""
    info = {k: v for k, v in conninfo_to_dict(conn.info.dsn).items() if v is not None}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if conn.info.password:
        env["PGPASSWORD"] = conn.info.password  # never on a command line
    info.pop("password", None)
    return make_conninfo("", **info), env


@contextmanager
def shadow(conn: Conn) -> Iterator[Shadow]:
    """A scratch database holding ``conn``'s schema; dropped on exit (see the module's docstring)."""
    dump, restore = _program("pg_dump"), _program("psql")
    if dump is None or restore is None:
        yield Shadow(None, "pg_dump and psql were not found")
        return
    live, env = _env(conn)
    name = f"zdm_lint_shadow_{uuid.uuid4().hex[:12]}"
    try:
        dumped = subprocess.run(  # noqa: S603 - our own argument list, no shell
            [dump, "--schema-only", "--no-owner", "--no-privileges", "--lock-wait-timeout=1000", "-d", live],
            env=env,
            capture_output=True,
            text=True,
            timeout=DUMP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        yield Shadow(None, f"pg_dump could not run: {redact(str(exc))}")
        return
    if dumped.returncode != 0:
        yield Shadow(None, f"pg_dump failed: {redact(dumped.stderr.strip())[:300]}")
        return
    try:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        yield Shadow(None, f"could not create a scratch database: {redact(str(exc)).strip()[:200]}")
        return
    target = make_conninfo(live, dbname=name)  # for psql: its password comes in PGPASSWORD
    secret = conn.info.password
    inside = make_conninfo(target, password=secret) if secret else target  # for this process
    try:
        restored = subprocess.run(  # noqa: S603 - our own argument list, no shell
            [restore, "-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", target],
            input=dumped.stdout,
            env=env,
            capture_output=True,
            text=True,
            timeout=DUMP_TIMEOUT_S,
            check=False,
        )
        if restored.returncode == 0:
            _populate(inside)
        yield Shadow(inside if restored.returncode == 0 else None, redact(restored.stderr.strip())[:300])
    finally:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _populate(dsn: str) -> None:
    """pg_dump makes materialized views WITH NO DATA; refresh each (empty, so at once), a view
    that reads another after it, so that a REFRESH … CONCURRENTLY in the file can run."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pending = [
            str(r[0]) for r in conn.execute("SELECT oid::regclass::text FROM pg_class WHERE relkind = 'm'")
        ]
        for _ in range(len(pending)):
            failed = []
            for view in pending:
                try:
                    conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.SQL(view)))
                except psycopg.Error:
                    failed.append(view)
            if not failed or failed == pending:
                return
            pending = failed


def matched_share(conn: Conn, table: str, where: str) -> float | None:
    """The planner's estimate, on the live database, of the share of ``table``'s rows that ``where``
    matches (EXPLAIN only: nothing is read or run). None when it cannot tell."""
    try:
        conn.execute("SELECT set_config('lock_timeout', '1s', false)")
        plans = [
            conn.execute(
                sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} {}").format(sql.SQL(table), sql.SQL(w))
            ).fetchone()
            for w in (f"WHERE {where}", "")
        ]
    except psycopg.Error:
        return None
    rows = [p[0][0]["Plan"]["Plan Rows"] if p else 0 for p in plans]
    return rows[0] / rows[1] if rows[1] else None


def live_rows(conn: Conn) -> dict[str, int | None]:
    """Whether each live table has rows, without reading it: its file size (0 = empty). None where
    the size cannot be read within the lock timeout (counted as having rows: never milder)."""
    out: dict[str, int | None] = {}
    before = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
    conn.execute("SELECT set_config('lock_timeout', '1s', false)")
    rows = conn.execute(
        "SELECT c.oid::regclass::text, c.oid FROM pg_class c WHERE c.relkind IN ('r', 'm')"
        " AND c.relnamespace <> 'pg_catalog'::regnamespace"
        " AND c.relnamespace <> 'information_schema'::regnamespace"
        " AND c.relnamespace <> 'pg_toast'::regnamespace"
    ).fetchall()
    for name, oid in rows:
        try:
            size = conn.execute("SELECT pg_relation_size(%s::oid)", [oid]).fetchone()
        except psycopg.errors.LockNotAvailable:
            out[str(name)] = None
            continue
        out[str(name)] = int(size[0]) if size and size[0] else 0
    conn.execute("SELECT set_config('lock_timeout', %s, false)", [before[0] if before else "0"])
    return out

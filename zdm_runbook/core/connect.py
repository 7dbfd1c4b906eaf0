"""Where the DSN comes from, how connections are opened, and how secrets are kept out of text.

A DSN is resolved from an explicit argument, else from an environment variable whose *name* the
caller gives (default ``ZDM_DSN``), else from libpq's own environment and service file. Parameters,
logs and notebooks only ever carry the variable's name; :func:`redact` scrubs anything printed.
"""

from __future__ import annotations

import os
import re
from typing import Any, Final, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import Row

from zdm_runbook.core.errors import ConfigError, DatabaseError

DEFAULT_DSN_ENV = "ZDM_DSN"
APPLICATION_NAME = "zdm_runbook"
# Every statement zdm-runbook sends ends with this comment. pg_stat_statements has no
# application_name, and it drops a comment before the statement but keeps one at its end (measured
# on 15 and 18): the tag is how the contract gate's evidence tells zdm's own statements (backfill,
# verification, compat checks) from the application's. On a line of its own, after any ``--``.
STATEMENT_TAG: Final = "\n/* zdm_runbook */"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Passwords this process used: seen in a DSN it resolved, in PGPASSWORD, or reported by a
# connection (libpq's own, from a passfile or a service file). redact() hides them everywhere.
_known_secrets: set[str] = set()

_URI_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^@\s/]+)(?=@)", re.I)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\"]+)",
    re.I,
)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<secret>[^&\s]+)", re.I)
# SQL text of other sessions (a blocker's query): CREATE/ALTER ROLE ... PASSWORD 'secret'
_SQL_PASSWORD = re.compile(r"(?P<head>\bPASSWORD\s+)(?P<secret>'(?:[^']|'')*')", re.I)
MASK = "***"


def remember_secret(dsn: str) -> None:
    """Record the password of ``dsn`` (if any) so :func:`redact` hides it everywhere."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return
    if isinstance(password, str) and password:
        _known_secrets.add(password)


def remember_connection_secret(conn: psycopg.Connection[Any]) -> None:
    """Record the password a connection used, wherever libpq found it (the DSN, ``PGPASSWORD``, a
    passfile, a service file): only the connection knows, so every connection opened reports it."""
    password = conn.info.password
    if password:
        _known_secrets.add(password)


def redact(text: str) -> str:
    """Hide passwords in URIs (``user:secret@``), keyword DSNs (``password=secret``), SQL
    (``PASSWORD 'secret'``) and the ones :func:`remember_secret` recorded."""
    out = _URI_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    out = _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, out)
    out = _KEYWORD_PASSWORD.sub(lambda m: m["head"] + MASK, out)
    out = _SQL_PASSWORD.sub(lambda m: m["head"] + f"'{MASK}'", out)
    for secret in sorted(_known_secrets, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


def find_secrets(text: str) -> list[tuple[int, str]]:
    """``(line, kind)`` of every password in ``text`` that :func:`redact` would hide.

    The archive scan uses it: an output notebook or HTML holding one fails the run loudly.
    Already-masked values (``***``) are not secrets."""
    found: list[tuple[int, str]] = []
    patterns = (
        ("URI password", _URI_PASSWORD),
        ("password= parameter", _QUERY_PASSWORD),
        ("password keyword", _KEYWORD_PASSWORD),
        ("SQL PASSWORD literal", _SQL_PASSWORD),
    )
    for kind, pattern in patterns:
        for m in pattern.finditer(text):
            if m["secret"].strip("'\"") != MASK:
                found.append((text.count("\n", 0, m.start()) + 1, kind))
    for secret in _known_secrets:
        start = text.find(secret)
        while start != -1:
            found.append((text.count("\n", 0, start) + 1, "the connection's password"))
            start = text.find(secret, start + 1)
    return sorted(set(found))


def resolve_dsn(dsn: str | None = None, env: str | None = None) -> str:
    """Return the DSN to use: ``dsn`` if given, else ``$env`` (default ``ZDM_DSN``), else ``""``.

    An empty DSN lets libpq use its own environment (PGHOST, PGSERVICE, ...). A variable that the
    caller named explicitly but that is unset is an error, so a typo never connects elsewhere.
    """
    env_password = os.environ.get("PGPASSWORD")
    if env_password:  # libpq's own variable: known before any connection (or failure) prints
        _known_secrets.add(env_password)
    if dsn:
        remember_secret(dsn)
        return dsn
    name = env or DEFAULT_DSN_ENV
    if not _ENV_NAME.match(name):
        raise ConfigError(f"dsn_env: {name!r} is not a valid environment variable name")
    value = os.environ.get(name)
    if value:
        remember_secret(value)
        return value
    if env is not None and env != DEFAULT_DSN_ENV:
        raise ConfigError(
            f"dsn_env: environment variable {name} is not set; export it with the connection"
            " string (the parameter names the variable, never the DSN itself)"
        )
    return ""


def describe(dsn: str) -> str:
    """A redacted one-line description of where ``dsn`` points, for headers and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    host = params.get("host") or os.environ.get("PGHOST") or "local socket"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    user = params.get("user") or os.environ.get("PGUSER") or "(default user)"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or "(default database)"
    return redact(f"{user}@{host}:{port}/{dbname}")


def tagged(query: Any) -> Any:
    """``query`` (text, bytes or :mod:`psycopg.sql`) with :data:`STATEMENT_TAG` at its end (a final
    ``;`` is dropped first: a comment after it would belong to no statement)."""
    if isinstance(query, sql.Composable):
        return sql.Composed([query, sql.SQL(STATEMENT_TAG)])
    if isinstance(query, bytes):
        return query.rstrip().rstrip(b";") + STATEMENT_TAG.encode()
    if isinstance(query, str):
        return query.rstrip().rstrip(";") + STATEMENT_TAG
    return query  # a t-string Template: psycopg composes it; left as it is


class TaggedCursor(psycopg.Cursor[Row]):
    """The cursor of every zdm connection: it sends each statement with :data:`STATEMENT_TAG`."""

    def execute(self, query: Any, params: Any = None, **options: Any) -> Self:
        return super().execute(tagged(query), params, **options)

    def executemany(self, query: Any, params_seq: Any, **options: Any) -> None:
        super().executemany(tagged(query), params_seq, **options)


def set_timeouts(
    conn: psycopg.Connection[Any],
    lock_timeout: float | str,
    statement_timeout: float | str,
    *,
    local: bool,
    workers: float | str | None = None,
) -> None:
    """Set ``lock_timeout`` and ``statement_timeout`` for the transaction (``local``) or the
    session, and with ``workers`` ``max_parallel_maintenance_workers`` (an index build's parallel
    workers). Seconds are sent as whole milliseconds, at least 1 (0 would mean no timeout); text is
    a setting as ``current_setting`` gave it, to put it back."""

    def text(value: float | str) -> str:
        return value if isinstance(value, str) else str(max(1, round(value * 1000)))

    query = "SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)"
    params: list[Any] = [text(lock_timeout), local, text(statement_timeout), local]
    if workers is not None:
        query += ", set_config('max_parallel_maintenance_workers', %s, %s)"
        params += [workers if isinstance(workers, str) else str(int(workers)), local]
    conn.execute(query, params)


def connect(
    dsn: str | None = None,
    *,
    env: str | None = None,
    phase: str | None = None,
    autocommit: bool = False,
    connect_timeout: int = 10,
    row_security: bool = True,
) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection tagged ``application_name=zdm_runbook[:phase]``; errors come redacted.

    ``row_security=False``: :func:`refuse_filtered_reads` (the backfill's session: no row skipped
    unseen)."""
    conninfo = resolve_dsn(dsn, env)
    app = f"{APPLICATION_NAME}:{phase}" if phase else APPLICATION_NAME
    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:  # not a DSN at all: bad input, not a server problem
        where = f"the variable {env or DEFAULT_DSN_ENV}" if not dsn else "the DSN given"
        raise ConfigError(
            f"{where} does not hold a connection string (postgresql://… or key=value …):"
            f" {redact(str(exc)).strip()}"
        ) from None
    try:
        conn = psycopg.connect(
            conninfo,
            autocommit=autocommit,
            application_name=app,
            connect_timeout=connect_timeout,
            cursor_factory=TaggedCursor,
        )
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot connect to {describe(conninfo)}: {redact(str(exc)).strip()}",
            getattr(exc, "sqlstate", None),
        ) from None
    remember_connection_secret(conn)
    if not row_security:
        refuse_filtered_reads(conn)
    return conn


def refuse_filtered_reads(conn: psycopg.Connection[Any]) -> None:
    """From now on a query of ``conn``'s that row-level security would filter fails instead
    (SQLSTATE 42501), as ``pg_dump``'s do (zdm_runbook.inspect.row_security says why). Only on a
    connection known not to be transaction-pooled: a pooler would hand the setting on to the app."""
    conn.execute("SET row_security = off")

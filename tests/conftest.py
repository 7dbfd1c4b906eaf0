"""Real PostgreSQL servers for the tests: ``ZDM_TEST_DSN`` (or ``--test-dsn``) if given, else the
embedded PostgreSQL 18, plus Debian's PostgreSQL 15 when its binaries are installed.

Each test that asks for ``db`` gets a fresh database on the primary server; ``any_pg_db`` runs the
test once per available server (two major versions where possible).

Markers: every test that uses a database is marked ``pg`` (``-m "not pg"`` runs the rest).
``@pytest.mark.pg(">= 18")`` runs a test only on servers whose major version matches; on the
others it is deselected (not skipped: it does not apply there), as psycopg's ``tests/fix_db.py``
does with its ``pg(version_expr)`` marker.
"""

from __future__ import annotations

import operator
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.helpers import ORDERS
from zdm_runbook.demo.embedded import DEBIAN_PG15_BIN, LocalServer, embedded_bin_dir

_servers: dict[str, LocalServer] = {}
_dsns: dict[str, str] = {}
_root = Path(tempfile.mkdtemp(prefix="zdm-tests-"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--test-dsn",
        metavar="DSN",
        default=os.environ.get("ZDM_TEST_DSN"),
        help="Server to test against instead of the embedded PostgreSQL 18 [env ZDM_TEST_DSN].",
    )


def available_servers() -> list[str]:
    """Labels of the servers this run tests against: the primary one, and pg15 if installed."""
    labels = ["primary"]
    if (DEBIAN_PG15_BIN / "postgres").exists():
        labels.append("pg15")
    return labels


def server_dsn(config: pytest.Config, label: str) -> str:
    """Admin DSN of a server, starting a throw-away local one the first time it is needed."""
    if label not in _dsns:
        given = config.getoption("--test-dsn")
        if label == "primary" and given:
            _dsns[label] = given
        else:
            bin_dir = embedded_bin_dir() if label == "primary" else DEBIAN_PG15_BIN
            server = LocalServer(data_dir=_root / label, bin_dir=bin_dir)
            _servers[label] = server
            _dsns[label] = server.start()
    return _dsns[label]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The servers' versions. A local server's comes from its binary: with pytest-xdist this runs in
    the controller, which starts no server (each worker starts its own)."""
    lines = []
    for label in available_servers():
        try:
            if label == "primary" and config.getoption("--test-dsn"):
                with psycopg.connect(config.getoption("--test-dsn"), connect_timeout=10) as conn:
                    row = conn.execute("SHOW server_version").fetchone()
                version = str(row[0]) if row else "?"
            else:
                bin_dir = embedded_bin_dir() if label == "primary" else DEBIAN_PG15_BIN
                out = subprocess.run(
                    [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
                )
                m = re.search(r"\(PostgreSQL\) (\S+)", out.stdout)
                version = m[1] if m else out.stdout.strip()
            lines.append(f"PostgreSQL ({label}): {version}")
        except Exception as exc:
            lines.append(f"PostgreSQL ({label}): unavailable ({exc})")
    return lines


_VERSION_SPEC = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+)\s*$")
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_majors: dict[str, int] = {}
DATABASE_FIXTURES = frozenset({"db", "any_pg_db"})
SLOW_FILES = frozenset(
    {"test_fleet.py", "test_lint_measured.py", "test_browser.py", "test_demo.py", "test_key_change_faults.py"}
)


def version_matches(spec: str, major: int) -> bool:
    """Whether a server of ``major`` version satisfies a ``pg`` marker's spec such as ``'>= 16'``."""
    m = _VERSION_SPEC.match(spec)
    if m is None:
        raise pytest.UsageError(f"pg marker: {spec!r} is not a version spec such as '>= 16' or '< 18'")
    return _COMPARE[m[1]](major, int(m[2]))


def server_major(config: pytest.Config, label: str) -> int:
    """The major version of a test server (started if needed), read once."""
    if label not in _majors:
        with psycopg.connect(server_dsn(config, label), connect_timeout=10) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        _majors[label] = int(str(row[0])) // 10000 if row else 0
    return _majors[label]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark database tests ``pg``; deselect those whose ``pg(spec)`` the server does not match."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pg)
        specs = [str(m.args[0]) for m in item.iter_markers("pg") if m.args]
        if specs:
            callspec = getattr(item, "callspec", None)
            label = callspec.params.get("any_pg_db", "primary") if callspec else "primary"
            if not all(version_matches(spec, server_major(config, label)) for spec in specs):
                dropped.append(item)
                continue
        keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    # The longest files first: pytest-xdist hands files to workers in this order, so no worker is
    # left with a two-minute file while the other has finished (the order within a file is kept).
    items[:] = sorted(keep, key=lambda item: item.path.name not in SLOW_FILES)


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _servers.values():
        server.destroy()
    shutil.rmtree(_root, ignore_errors=True)


def _fresh_database(config: pytest.Config, label: str) -> Iterator[str]:
    admin = server_dsn(config, label)
    name = f"zdm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield make_conninfo(admin, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
        )


@pytest.fixture
def db(request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh, empty database on the primary server."""
    yield from _fresh_database(request.config, "primary")


@pytest.fixture(params=available_servers())
def any_pg_db(request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh database, once per available server (PostgreSQL 18, and 15 if installed)."""
    yield from _fresh_database(request.config, request.param)


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the fresh database of ``db``."""
    with psycopg.connect(db, autocommit=True) as c:
        yield c


@pytest.fixture
def orders_env(db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh database with the ``orders`` table, its DSN in ``$ZDM_DSN``, run from ``tmp_path``."""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(ORDERS)
    monkeypatch.setenv("ZDM_DSN", db)
    monkeypatch.chdir(tmp_path)
    return db

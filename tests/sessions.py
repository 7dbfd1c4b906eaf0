"""Real second sessions for lock tests: a blocker holding a lock, and an app timing its queries.

Nothing here is mocked: each helper is its own PostgreSQL connection, tagged with an
``application_name`` so the code under test can be seen naming it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg


class Blocker:
    """A session that runs ``statements`` in an open transaction and keeps its locks until released.

    ``hold_for`` releases (commits) automatically after that many seconds; ``release()`` earlier.
    """

    def __init__(
        self, dsn: str, *statements: str, app: str = "billing", hold_for: float | None = None
    ) -> None:
        self.conn = psycopg.connect(dsn, application_name=app)
        for statement in statements:
            self.conn.execute(statement)  # type: ignore[arg-type]
        self.pid = self.conn.info.backend_pid
        self._lock = threading.Lock()
        self._timer = threading.Timer(hold_for, self.release) if hold_for else None
        if self._timer:
            self._timer.start()

    def release(self) -> None:
        with self._lock:
            if not self.conn.closed:
                self.conn.commit()
                self.conn.close()

    def __enter__(self) -> Blocker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer:
            self._timer.cancel()
        self.release()


class AppProbe:
    """An "app" issuing ``query`` every ``every`` seconds in its own session, timing each one."""

    def __init__(self, dsn: str, query: str, every: float = 0.05, app: str = "app") -> None:
        self.dsn, self.query, self.every, self.app = dsn, query, every, app
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name=self.app) as conn:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    conn.execute(self.query)  # type: ignore[arg-type]
                except psycopg.Error as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(self.every)

    def __enter__(self) -> AppProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def max_wait(self) -> float:
        return max(self.latencies, default=0.0)


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def is_waiting(dsn: str, pid: int) -> bool:
    """True while session ``pid`` waits for a lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted)", [pid]
        ).fetchone()
    return bool(row and row[0])


class Background:
    """One statement running in its own session on a thread (it may wait for a lock); ``pid`` is known at once."""

    def __init__(self, dsn: str, statement: str, app: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True, application_name=app)
        self.pid = self.conn.info.backend_pid
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(statement,), daemon=True)
        self._thread.start()

    def _run(self, statement: str) -> None:
        try:
            self.conn.execute(statement)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            self.error = str(exc)

    def join(self, timeout: float = 30) -> None:
        self._thread.join(timeout)
        self.conn.close()

"""Simulated app traffic for the demo: an app version issuing inserts, updates and selects in a loop.

Each :class:`App` runs in its own thread on its own connection (``application_name`` = its name),
times every request, labels it with the phase running at the time, counts errors, and keeps every
acknowledged (committed) insert so the demo can prove none was lost.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import psycopg

from zdm_runbook.core.connect import redact


@dataclass(frozen=True)
class Shape:
    """What one app version sends: an insert returning ``id``, an update and a point select."""

    insert: str
    update: str
    select: str
    values: Callable[[random.Random], dict[str, Any]]


@dataclass
class Request:
    phase: str
    kind: str
    ms: float
    error: str | None = None


@dataclass
class App:
    """One app version's traffic; ``phase`` is read at each request to label it."""

    name: str
    dsn: str
    shape: Shape
    phase: Callable[[], str]
    think_s: float = 0.005
    max_id: int = 1000
    requests: list[Request] = field(default_factory=list)
    acknowledged: dict[int, dict[str, Any]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> App:
        self._thread = threading.Thread(target=self._run, name=f"app-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        rng = random.Random(self.name)  # noqa: S311 - load, not cryptography
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, application_name=self.name)
                self._one(conn, rng)
            except psycopg.OperationalError as exc:  # connection lost: count it, reconnect
                self.requests.append(Request(self.phase(), "connect", 0.0, redact(str(exc))[:200]))
                conn = None
                time.sleep(0.1)
            time.sleep(self.think_s)
        if conn is not None:
            conn.close()

    def _one(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        kind = rng.choices(("insert", "update", "select"), weights=(2, 1, 3))[0]
        values = self.shape.values(rng)
        phase = self.phase()
        started = time.perf_counter()
        error = None
        try:
            if kind == "insert":
                row = conn.execute(self.shape.insert, values).fetchone()
                if row is not None:
                    self.acknowledged[int(row[0])] = values
                    self.max_id = max(self.max_id, int(row[0]))
            else:
                values["id"] = rng.randint(1, self.max_id)
                cur = conn.execute(self.shape.update if kind == "update" else self.shape.select, values)
                if cur.description:
                    cur.fetchall()
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            error = f"[{exc.sqlstate}] {redact(str(exc)).splitlines()[0]}"[:200]
        self.requests.append(Request(phase, kind, (time.perf_counter() - started) * 1000, error))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [(self.name, r.phase, r.kind, r.ms, r.error) for r in list(self.requests)],
            columns=["app", "phase", "kind", "ms", "error"],
        )


def summary(apps: list[App]) -> pd.DataFrame:
    """Per app and phase: requests, errors, p50 and p99 latency (ms)."""
    frames = [a.frame() for a in apps]
    data = pd.concat(frames) if frames else pd.DataFrame(columns=["app", "phase", "ms", "error"])
    if data.empty:
        return pd.DataFrame(columns=["app", "phase", "requests", "errors", "p50_ms", "p99_ms"])
    grouped = data.groupby(["app", "phase"], sort=False)
    return pd.DataFrame(
        {
            "requests": grouped.size(),
            "errors": grouped["error"].count(),
            "p50_ms": grouped["ms"].quantile(0.5).round(2),
            "p99_ms": grouped["ms"].quantile(0.99).round(2),
        }
    ).reset_index()

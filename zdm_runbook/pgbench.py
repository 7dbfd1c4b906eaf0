"""``pgbench`` (shipped with the embedded binaries) as a real client adding load during a change.

It runs in short rounds (``-T`` seconds each) until stopped, so each round's transactions, failures
and latency can be labelled with the phase that was running, and stopping never waits long.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from .embedded import LocalServer

_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_LATENCY = re.compile(r"latency average = ([\d.]+) ms")


@dataclass
class Round:
    phase: str
    processed: int
    failed: int
    latency_ms: float | None


@dataclass
class PgBench:
    """Rate-limited point reads on ``orders`` by ``clients`` pgbench clients, round after round."""

    server: LocalServer
    dbname: str
    rows: int
    phase: Callable[[], str]
    clients: int = 2
    rate: int = 100
    round_s: int = 2
    rounds: list[Round] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PgBench:
        self._thread = threading.Thread(target=self._run, name="pgbench", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.round_s + 30)

    def _run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="zdm-pgbench-") as folder:
            script = Path(folder) / "read.sql"
            script.write_text(f"\\set id random(1, {self.rows})\nSELECT total FROM orders WHERE id = :id;\n")
            params = conninfo_to_dict(self.server.dsn(self.dbname))
            argv = [
                str(self.server.bin_dir / "pgbench"),
                "--no-vacuum",
                f"--client={self.clients}",
                f"--rate={self.rate}",
                f"--time={self.round_s}",
                f"--file={script}",
                f"--host={params['host']}",
                f"--port={params['port']}",
                f"--username={params['user']}",
                self.dbname,
            ]
            while not self._stop.is_set():
                phase = self.phase()
                done = subprocess.run(  # noqa: S603 - our own binary and arguments
                    argv, capture_output=True, text=True, timeout=self.round_s + 60, check=False
                )
                if done.returncode not in (0, 2):  # 2: some transactions failed; counted below
                    self.errors.append(done.stderr.strip()[-300:])
                    self._stop.wait(1)
                    continue
                out = done.stdout
                processed = _PROCESSED.search(out)
                failed = _FAILED.search(out)
                latency = _LATENCY.search(out)
                self.rounds.append(
                    Round(
                        phase,
                        int(processed[1]) if processed else 0,
                        int(failed[1]) if failed else 0,
                        float(latency[1]) if latency else None,
                    )
                )

    @property
    def processed(self) -> int:
        return sum(r.processed for r in self.rounds)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.rounds) + len(self.errors)

    def report(self) -> str:
        worst = max((r.latency_ms for r in self.rounds if r.latency_ms is not None), default=0.0)
        return (
            f"{self.processed:,} transactions in {len(self.rounds)} rounds, {self.failed} failed,"
            f" worst round's average latency {worst:.2f} ms"
        )

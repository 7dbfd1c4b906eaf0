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

from zdm_runbook.demo.embedded import LocalServer

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
    """``clients`` pgbench clients, round after round: by default rate-limited point reads on
    ``orders``; ``builtin="tpcb-like"`` runs pgbench's own script instead. Every transaction's
    latency is kept, labelled with the phase it ran in (``latencies``)."""

    server: LocalServer
    dbname: str
    rows: int
    phase: Callable[[], str]
    clients: int = 2
    rate: int | None = 100
    round_s: int = 2
    builtin: str | None = None
    rounds: list[Round] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    latencies: list[tuple[str, float]] = field(default_factory=list)
    finished: list[tuple[float, float]] = field(default_factory=list)  # (epoch when done, ms)
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
                f"--time={self.round_s}",
                f"--builtin={self.builtin}" if self.builtin else f"--file={script}",
                "--log",
                f"--log-prefix={Path(folder) / 'tx'}",
                f"--host={params['host']}",
                f"--port={params['port']}",
                f"--username={params['user']}",
                self.dbname,
            ] + ([f"--rate={self.rate}"] if self.rate else [])
            while not self._stop.is_set():
                phase = self.phase()
                done = subprocess.run(  # noqa: S603 - our own binary and arguments
                    argv, capture_output=True, text=True, timeout=self.round_s + 60, check=False, cwd=folder
                )
                self._collect(Path(folder), phase)
                if done.returncode not in (0, 2):  # 2: some transactions failed; counted below
                    self.errors.append(done.stderr.strip()[-300:])
                    self._stop.wait(1)
                    continue
                out = done.stdout
                processed = _PROCESSED.search(out)
                failed = _FAILED.search(out)
                latency = _LATENCY.search(out)
                aborted = done.stderr.count("aborted")
                self.rounds.append(
                    Round(
                        phase,
                        int(processed[1]) if processed else 0,
                        (int(failed[1]) if failed else 0) + aborted,
                        float(latency[1]) if latency else None,
                    )
                )

    def _collect(self, folder: Path, phase: str) -> None:
        """Read and remove the round's per-transaction logs: the third field is the latency (µs)."""
        for log in folder.glob("tx.*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 6 and fields[2].isdigit():
                    ms = int(fields[2]) / 1000
                    self.latencies.append((phase, ms))
                    self.finished.append((int(fields[4]) + int(fields[5]) / 1e6, ms))
            log.unlink()

    def by_phase(self) -> dict[str, tuple[int, float, float]]:
        """Per phase (as labelled when each round started): transactions, p50 and p99 latency (ms)."""
        return {
            phase: _stats([ms for p, ms in self.latencies if p == phase])
            for phase in dict.fromkeys(p for p, _ in self.latencies)
        }

    def by_window(self, windows: list[tuple[str, float, float]]) -> dict[str, tuple[int, float, float]]:
        """Per ``(label, start, end)`` epoch window: transactions that finished in it, p50, p99 (ms).

        A transaction that waited for a lock finishes after the wait, so its whole latency counts."""
        return {
            label: _stats([ms for at, ms in self.finished if start <= at < end])
            for label, start, end in windows
        }

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


def _stats(values: list[float]) -> tuple[int, float, float]:
    """Count, p50 and p99 of ``values`` (zeros when empty)."""
    if not values:
        return 0, 0.0, 0.0
    ordered = sorted(values)
    return len(ordered), ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

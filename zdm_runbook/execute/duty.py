"""The duty controller: how much of the time a backfill runs while the app shares the server.

The signal is the app's own latency, seen through Little's law. A sampler on a second connection
counts the app's sessions in flight (``state = 'active'``: running or waiting, ours excluded) many
times a second, each sample marked by whether a batch of ours was running at that moment. At the
app's steady arrival rate the mean number in flight is the rate times the mean latency, so

    slowdown = mean in flight while we batch / mean in flight while we rest

is how much longer the app's requests take while a batch runs, whatever the app sends and
without its statements or any extension. (The resting level is a median over the last 30 s, and
a rest that stays above it counts as slowed too: see :class:`DutyController`.) The app's tail is
another matter: on 2 cores it is made outside the server's execution, by the app's processes
waiting for a core, more often while a batch runs than between batches (``bench/app_tail.py``),
and the count in flight does not see it; hence the bounds on the duty and the batch below.

The controller (GitLab's batch optimizer steers batch size toward a target efficiency with bounded
steps; pt-online-schema-change pauses on ``--max-load``, an absolute ``Threads_running``; here the
count is compared with itself, so no threshold is guessed per server) keeps an exponential moving
average of the slowdown over windows of at least ``WINDOW`` seconds and changes the duty, the
share of wall time spent in batches, and the largest batch, by bounded steps: doubled while the
slowdown stays flat (at most 1.1), up by 20% while it stays under ``max_app_slowdown``, and
the moment it goes over, shrunk in proportion (``max_app_slowdown`` / slowdown, halved at
most). A longer batch holds its row locks longer, and an app session waiting for one is in
flight too, so the same signal steers both. A busy but not saturated server (spare
cores) shows no slowdown and gets a fast backfill; a saturated one shows it at once and gets a
polite one. It starts at the engine's ``busy_duty`` (a quarter of the time), and opens at once at
``MAX_DUTY`` when the app, watched at rest for its first dozen samples (about a fifth of a
second), keeps less than one session in a transaction (see ``OPEN_BELOW``).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psycopg

from zdm_runbook.core.connect import connect

Conn = psycopg.Connection[Any]
# Seconds between samples. Sampling costs the app: on 2 cores at 200 tx/s, sampling every 10 ms
# alone raised the app's p99 1.34x (pooled over three 8 s windows, ~4,800 transactions each);
# every 40 ms, 0.96x (bench/RESULTS.md). Fewer samples mean longer windows per decision.
SAMPLE_EVERY = 0.04
WINDOW = 2.0  # seconds of samples, at least, per decision
MIN_SAMPLES = 25  # per side (batching, resting) of a window: fewer decide on noise
# At most half the time (less with ``busy_max_duty``), and batches no larger than the engine's
# ``busy_max_batch_size``: the mean in flight cannot see the app's tail (a batch's CPU burst meets
# few requests, yet those few make the p99). Measured on 2 cores at 200 tx/s, pooled over three
# 8 s windows: the mean read flat (<= 1.0x) while the controller, allowed 90% and 4,000-row
# batches, drove the app's p99 to 3.5x; fixed 500-row batches half the time gave 1.41x at about
# 30% of the idle rate (bench/RESULTS.md).
MIN_DUTY, MAX_DUTY = 0.02, 0.5
# While the slowdown is flat (at most FLAT) the steps double; nearer the limit they grow by 20%
# (GitLab's batch optimizer's bound); over it they shrink in proportion, at most by half. A
# halving on every window just over the limit let noise (a window holds about 25 samples a side)
# keep the duty near its floor: 6 to 12% of the time at 300,000 rows, where the app's p99 had
# room to spare (0.8x).
FLAT, GROW_FAST, GROW, SHRINK = 1.1, 2.0, 1.2, 0.5
# The opening: once the sampler has OPEN_AFTER samples of the app at rest (taken sooner: see
# OPENING_EVERY), an app with fewer than OPEN_BELOW sessions in a transaction on average (running
# a statement, or between two: idle in transaction) goes to MAX_DUTY at once instead of doubling
# toward it window by window. Such an app keeps less than one backend busy, and our batches keep
# one: on a server of two cores or more, the two fit. Without the opening, at 200 tx/s (0.2 to 0.4
# sessions in flight) the first decision came after 3.5 to 4 s at the start duty, so a
# 300,000-row backfill spent most of its run there (bench/RESULTS.md). Why transactions, not
# statements: pgbench's TPC-B at half its full-speed rate (1,900 tx/s, 4 clients, 2 cores) kept
# only 0.32 statements in flight (between its statements a session is idle in transaction) while
# it used about a core, and opened on statements, its p99 during migrate went from 1.55x to 5.87x.
# An app with more in a transaction keeps the start duty; every later window still backs off the
# moment the app slows.
OPEN_AFTER, OPEN_BELOW = 12, 1.0
# Until the opening has its OPEN_AFTER resting samples the sampler takes them every OPENING_EVERY
# seconds, then every SAMPLE_EVERY: the denser sampling lasts about a sixth of a second, once,
# where at SAMPLE_EVERY the start duty lasted 0.6 to 0.7 s. Measured with 100,000
# rows under pgbench at 200 tx/s (2 cores, 18.6, three runs each): 28 to 33% of the time in
# batches and 77,000 to 97,000 rows/s before, 38 to 39% and 89,000 to 116,000 rows/s after.
OPENING_EVERY = 0.01
BASELINE_S = 30.0  # the resting means the baseline is the median of
SMOOTH = 0.5  # weight of the newest window in the moving average
PRIOR = 0.05  # sessions added to both means: an app idle while we rest is not an infinite slowdown

# Sessions running a statement, and sessions in a transaction (running one, or between two).
_IN_FLIGHT = """
SELECT count(*) FILTER (WHERE state = 'active'),
       count(*) FILTER (WHERE state IN ('active', 'idle in transaction'))
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND application_name NOT LIKE 'zdm_runbook%%'
"""


class Sampler:
    """Counts the app's sessions in flight from its own connection, in a daemon thread; the
    engine says when a batch runs (:meth:`batching`) and takes the counts (:meth:`window`)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._lock = threading.Lock()
        self._in_batch = False
        self._sums = [[0, 0], [0, 0]]  # [resting, batching] x [samples, sessions counted]
        self._in_transaction = 0  # sessions in a transaction over the resting samples: the opening's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zdm-duty-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with connect(self.dsn, phase="migrate:sampler", autocommit=True) as conn:
                rested = 0  # resting samples so far: the opening's, taken sooner (OPENING_EVERY)
                while not self._stop.is_set():
                    with self._lock:
                        side = int(self._in_batch)
                    row: Any = conn.execute(_IN_FLIGHT).fetchone()
                    with self._lock:
                        if side == int(self._in_batch):  # a sample across an edge says nothing
                            self._sums[side][0] += 1
                            self._sums[side][1] += int(row[0]) if row else 0
                            if not side:
                                self._in_transaction += int(row[1]) if row else 0
                                rested += 1
                    self._stop.wait(sample_every(rested))
        except (psycopg.Error, OSError):  # no sampler, no evidence: the controller holds its duty
            return

    def batching(self, running: bool) -> None:
        with self._lock:
            self._in_batch = running

    def window(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """``((samples, sessions) resting, (samples, sessions) batching, (samples, sessions in a
        transaction) resting)`` since the last call."""
        with self._lock:
            (rest, run), opened = self._sums, self._in_transaction
            self._sums, self._in_transaction = [[0, 0], [0, 0]], 0
        return (rest[0], rest[1]), (run[0], run[1]), (rest[0], opened)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


@dataclass
class DutyController:
    """The duty and the smoothed slowdown it is steered by (see the module text).

    The baseline is the app's sessions in flight while we rest: the median window mean of the last
    ``BASELINE_S`` seconds, not the latest. A backlog our batches cause outlives them (an app
    that fell behind its arrivals catches up in our rests too), so the latest rest would rise with
    it and hide it; compared with the median, a rest that stays high counts as slowed too (the
    lowest mean would do the same, but one quiet window would then make every later one look
    slow). If the app itself gets busier, the baseline follows within ``BASELINE_S``, and until
    then the backfill is the more polite. The duty stays under ``max_duty`` (at most ``MAX_DUTY``)
    so rests keep coming."""

    duty: float
    max_app_slowdown: float
    batch_cap: int  # the largest batch while the app shares the server: steered like the duty
    min_batch: int
    max_batch: int  # the cap never grows past this (the engine's ``busy_max_batch_size``)
    open_below: float = OPEN_BELOW  # 0: no opening (see OPEN_BELOW)
    max_duty: float = MAX_DUTY  # the bound the duty grows to and opens at (``busy_max_duty``)
    slowdown: float | None = None
    opened: bool | None = None  # None: not decided yet; then whether it opened at max_duty
    opening: float | None = None  # the app's mean sessions in a transaction the opening read
    _rests: deque[tuple[float, float]] = field(default_factory=deque)  # (when, mean in flight)
    _since: float = 0.0
    _rest: tuple[int, int] = (0, 0)
    _run: tuple[int, int] = (0, 0)
    _open: tuple[int, int] = (0, 0)  # resting samples and sessions the opening reads

    def __post_init__(self) -> None:
        self.max_duty = min(self.max_duty, MAX_DUTY)
        self.duty = min(self.duty, self.max_duty)

    @property
    def baseline(self) -> float | None:
        return statistics.median(mean for _, mean in self._rests) if self._rests else None

    def observe(
        self,
        rest: tuple[int, int],
        run: tuple[int, int],
        in_transaction: tuple[int, int] | None = None,
        now: float | None = None,
    ) -> float:
        """Add a sampler window; once a whole window has enough samples, decide. Returns the duty.

        ``in_transaction`` (resting samples, sessions in a transaction) is what the opening reads;
        without it, the sessions running a statement at rest."""
        now = time.monotonic() if now is None else now
        if not self._since:
            self._since = now
        self._rest = (self._rest[0] + rest[0], self._rest[1] + rest[1])
        self._run = (self._run[0] + run[0], self._run[1] + run[1])
        if self.opened is None:
            opening = rest if in_transaction is None else in_transaction
            self._open = (self._open[0] + opening[0], self._open[1] + opening[1])
            if self._open[0] >= OPEN_AFTER:
                self.opening = self._open[1] / self._open[0]
                self.opened = self.opening < self.open_below
                if self.opened:
                    self.duty = max(self.duty, self.max_duty)
        if now - self._since < WINDOW or self._run[0] < MIN_SAMPLES:
            return self.duty
        resting = self._rest[1] / self._rest[0] if self._rest[0] >= MIN_SAMPLES else None
        if resting is not None:
            self._rests.append((now, resting))
        while self._rests and self._rests[0][0] < now - BASELINE_S and len(self._rests) > 1:
            self._rests.popleft()
        if self.baseline is None:
            return self.duty
        worst = max(self._run[1] / self._run[0], resting or 0.0)
        self.slowdown = _smooth(self.slowdown, (worst + PRIOR) / (self.baseline + PRIOR))
        if self.slowdown > self.max_app_slowdown:
            step = max(SHRINK, self.max_app_slowdown / self.slowdown)
        else:
            step = GROW_FAST if self.slowdown <= FLAT else GROW
        self.duty = min(self.max_duty, max(MIN_DUTY, self.duty * step))
        self.batch_cap = int(min(self.max_batch, max(self.min_batch, self.batch_cap * step)))
        self._since, self._rest, self._run = now, (0, 0), (0, 0)
        return self.duty

    def describe(self, pause: float) -> str:
        """The progress line's words for it: the duty, the app's slowdown, the rest between batches."""
        opened = ""
        if self.opened and self.slowdown is None:
            opened = f" (the app keeps {self.opening:.1f} sessions in a transaction: opened at once)"
        slowdown = f", app slowed {self.slowdown:.2f}x" if self.slowdown is not None else ""
        return (
            f"sharing the server with the app: batches {100 * self.duty:.0f}% of the time{opened}"
            f"{slowdown}, {1000 * pause:.0f} ms between batches"
        )

    def pause_after(self, batch_seconds: float) -> float:
        """The rest after a batch of ``batch_seconds`` that keeps batches at ``duty`` of the time."""
        return batch_seconds * (1 / self.duty - 1)


def sample_every(rested: int) -> float:
    """Seconds to the next sample, after ``rested`` samples at rest: sooner until the opening can
    decide (see ``OPENING_EVERY``)."""
    return OPENING_EVERY if rested < OPEN_AFTER else SAMPLE_EVERY


def _smooth(average: float | None, latest: float) -> float:
    return latest if average is None else SMOOTH * latest + (1 - SMOOTH) * average

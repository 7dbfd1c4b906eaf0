"""Backfill progress: where a backfill stands (:class:`State`), a DataFrame at any time, a log line
headless, a widget bar and a live chart in Jupyter.

Which one is a parameter (``interactive``), never a guess: under papermill widget updates are
never seen, so a headless run logs a line every few seconds instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from zdm_runbook.core.durations import human_seconds
from zdm_runbook.execute.keyset import Key
from zdm_runbook.ledger.status import BATCH_COLUMNS


@dataclass
class Batch:
    """One committed batch, as the ledger records it."""

    number: int
    lower: Key | None
    upper: Key
    rows_scanned: int
    rows_updated: int
    size: int
    seconds: float
    retries: int
    throttled_s: float
    at: float


@dataclass
class State:
    """Where a backfill stands; what progress displays and charts read."""

    table: str
    rows_estimate: int | None
    rows_scanned: int = 0
    rows_updated: int = 0
    batch_size: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    paused: str | None = None
    batches: list[Batch] = field(default_factory=list)
    retries: int = 0
    reconnects: int = 0
    resumed_from: int = 0  # rows a previous run had already done: not part of this run's rate
    app_busy: bool = False  # other sessions used the database in the last second: share it
    doing: str = "starting"  # what the engine is doing between batches: see activity()
    sharing: str | None = None  # how it shares the server with the app, kept across batches
    paced: str | None = None  # the pause the WAL cap set after the last batch, when it was the longer
    steered: str | None = None  # what a DBA set with ``zdm backfill set``: see steered()
    held: dict[str, float] = field(default_factory=dict)  # seconds held, per kind of hold (.holds)
    step: str = ""  # the backfill step this is the progress of (several may share one pass)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        done = self.rows_scanned - self.resumed_from
        return done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if not self.rows_estimate or not self.rate or self.finished:
            return None
        return max(0.0, self.rows_estimate - self.rows_scanned) / self.rate

    @property
    def title(self) -> str:
        """``backfill <step> of <table>``: what the summary and a headless line are about."""
        return f"backfill {self.step} of {self.table}" if self.step else f"backfill of {self.table}"

    def summary(self) -> str:
        """The one-line text summary printed at the end. The rows are the whole backfill's; the
        batches, seconds and rate are this run's, so a resumed run says where it took over."""
        run = f" in {len(self.batches)} batches, {self.elapsed:.1f} s, {self.rate:,.0f} rows/s"
        if self.resumed_from:
            here = self.rows_scanned - self.resumed_from
            run = f"; this run resumed after {self.resumed_from:,} and scanned {here:,}{run}"
        return (
            f"{self.title}: {self.rows_scanned:,} rows scanned,"
            f" {self.rows_updated:,} updated{run};"
            f" {self.retries} batch retries, {self.reconnects} reconnects{self._how()}"
        )

    def _how(self) -> str:
        """How this run went beside the app, for the record: its share of the time in batches when
        it shared the server, and the time it held, per kind of hold."""
        how = ""
        if self.sharing and self.elapsed > 0:
            busy = sum(b.seconds for b in self.batches) / self.elapsed
            how = f"; shared the server with the app: in batches {100 * busy:.0f}% of the time"
        if self.held:
            kinds = ", ".join(f"{kind} {human_seconds(s)}" for kind, s in self.held.items())
            how += f"; held {human_seconds(sum(self.held.values()))} ({kinds})"
        return how


def frame(state: State) -> pd.DataFrame:
    """One row per batch of this run: when (seconds since start), sizes, duration, retries, throttling."""
    rows, done = [], state.resumed_from
    for b in state.batches:
        done += b.rows_scanned
        rows.append(
            {
                "batch": b.number,
                "at_s": round(b.at - state.started, 3),
                "rows_scanned": b.rows_scanned,
                "rows_updated": b.rows_updated,
                "batch_size": b.size,
                "seconds": b.seconds,
                "retries": b.retries,
                "throttled_s": b.throttled_s,
                "rows_done": done,
            }
        )
    return pd.DataFrame(rows, columns=list(BATCH_COLUMNS))


def line(state: State, named: bool = False) -> str:
    """``orders: 412,000 / 1,000,000 rows (41%), 38,200 rows/s, ETA 15 s, batch 5,000 rows``, and
    why it waits, or how it shares the server with the app (``; sharing the server …``) and
    whether the WAL cap paces it (``; paced to the WAL cap …``).

    ``named`` starts it ``backfill <step> of orders:`` as the summary does, for a log where the
    line has no title: backfills sharing one pass log a line each, alike but for rows updated."""
    total = state.rows_estimate
    share = f" ({100 * state.rows_scanned / total:.0f}%)" if total else ""
    of = f" / ~{total:,}" if total else ""
    eta = f", ETA {human_seconds(state.eta)}" if state.eta is not None else ""
    what = state.title if named and state.step else state.table
    text = (
        f"{what}: {state.rows_scanned:,}{of} rows{share}, {state.rows_updated:,} updated,"
        f" {state.rate:,.0f} rows/s{eta}, batch {state.batch_size:,} rows"
    )
    if state.paused:
        return f"{text}; waiting: {state.paused}"
    if state.finished is not None:
        return text
    # A DBA's setting rules over the engine's own sharing, so the line says that, not the duty.
    how = state.steered or (state.sharing if state.app_busy else None)
    return text + "".join(f"; {part}" for part in (how, state.paced) if part)


def steered(batch_size: int | None, pause_ms: int | None) -> str | None:
    """What ``zdm backfill set`` told the engine, for the progress line: ``steered by zdm backfill
    set: batch 250 rows, 5 ms between batches``; None when nothing is set (``--auto``).

    A batch size set alone leaves the rest between batches to the engine, and the line says so."""
    parts = [f"batch {batch_size:,} rows"] if batch_size else []
    if pause_ms is not None:
        parts.append(f"{pause_ms:,} ms between batches")
    elif parts:
        parts.append("the rest between batches the engine's")
    return f"steered by zdm backfill set: {', '.join(parts)}" if parts else None


def activity(state: State) -> str:
    """What the backfill is doing right now, for a display that refreshes between batches:
    ``holding: …`` (paused, replica lag, a lock queue), ``sharing the server …``, ``batching``,
    then ``verifying …`` and its result; with the time since the last batch committed."""
    if state.paused:
        return f"holding: {state.paused}"
    if state.finished is not None or not state.batches or state.doing.startswith(("interrupted", "failed")):
        return state.doing
    ago = time.monotonic() - state.batches[-1].at
    return f"{state.doing}, last batch {human_seconds(ago)} ago"


class LogProgress:
    """Headless: one line every ``every`` seconds (and at the end) through ``emit``, per step,
    each naming its step."""

    def __init__(self, every: float = 5.0, emit: Callable[[str], None] | None = None) -> None:
        self.every = every
        self.emit = emit or (lambda text: print(text, flush=True))
        self._last: dict[str, float] = {}  # per step: backfills sharing one pass report in turn

    def __call__(self, state: State) -> None:
        now = time.monotonic()
        if state.finished is not None or now - self._last.get(state.step, 0.0) >= self.every:
            self._last[state.step] = now
            self.emit(("done: " if state.finished is not None else "") + line(state, named=True))

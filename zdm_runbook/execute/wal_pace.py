"""The WAL cap (``max_wal_mb_per_s``): the server's WAL rate, averaged, kept under it while a
backfill runs, by pausing after each batch and holding when the average goes over anyway.

Why it matters: on a server whose writes reach the disk, the WAL a backfill writes brings the
next checkpoint forward (one is requested every ``max_wal_size / (1 + checkpoint_completion_target)``
of WAL), and a checkpoint that must keep pace with fast WAL writes its dirty pages fast: under
TPC-B with fsync on, the app's p99 during the checkpoint that wrote out a 1,000,000-row pass's pages
was 9.6 to 16.7x its level just before, and 5.4x with a working cap of 12 MB/s
(``bench/pgbench_migration.py --fsync``, ``bench/RESULTS.md``).

How, and why not a check alone: the health check reads the WAL position every half second. A hold
that compared two readings half a second apart, and lifted once one such stretch was under the
cap, let the engine run at full speed between holds: on an idle server it averaged about 62 MB/s
against a cap of 12 (measured). Here the reading before the stretch that went over stays the
reference until the average since it is back under the cap, so each hold lasts as long as the
excess needs. And so that holds are the exception, not a square wave: from the WAL written per
row walked between two readings (the app's WAL in that time counted in, which is conservative),
each batch is followed by the pause that keeps its own rows at the cap. The app's WAL then
raises the estimate per row, and with it the pause, until both together fit under the cap: an app
that alone writes more than the cap holds the backfill. Until the first estimate the engine checks
after every batch: otherwise a table done within one check interval would be done at full speed.
A pause is at most ``MAX_PAUSE``: an estimate taken while the app wrote a burst could otherwise
stop the engine for long after the burst ended; a longer wait is the hold's, which reads the
server again every half second.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PAUSE = 2.0  # seconds


@dataclass
class WalPace:
    """The cap in MB/s (0: none), the reference reading and the WAL per row walked."""

    cap_mb_per_s: int
    per_row: float | None = None  # bytes of WAL per row walked, the last estimate
    _ref: tuple[float, float, int] | None = None  # (when, WAL position in bytes, rows walked)

    def over(self, at: float, wal_bytes: float, rows: int) -> float | None:
        """At a check: the average rate (MB/s) since the reference if it is over the cap, the
        reference kept; else None, and this reading is the reference."""
        if not self.cap_mb_per_s:
            return None
        if self._ref is not None and at > self._ref[0]:
            since, written, walked = at - self._ref[0], wal_bytes - self._ref[1], rows - self._ref[2]
            if walked > 0:
                self.per_row = written / walked
            rate = written / since / 1e6
            if rate > self.cap_mb_per_s:
                return rate
        self._ref = (at, wal_bytes, rows)
        return None

    @property
    def unknown(self) -> bool:
        """A cap without an estimate yet: check after every batch until there is one (a small table
        is done within one check interval, at full speed, otherwise)."""
        return bool(self.cap_mb_per_s) and self.per_row is None

    def pause_after(self, rows: int, seconds: float) -> float:
        """The pause after a batch that walked ``rows`` in ``seconds``, keeping its WAL at the cap."""
        if not self.cap_mb_per_s or self.per_row is None:
            return 0.0
        return min(MAX_PAUSE, max(0.0, rows * self.per_row / (self.cap_mb_per_s * 1e6) - seconds))

    def describe(self, pause: float) -> str:
        """The progress line's words for a pause it set."""
        return (
            f"paced to the WAL cap of {self.cap_mb_per_s} MB/s ({self.per_row or 0:,.0f} bytes a row):"
            f" {1000 * pause:.0f} ms between batches"
        )

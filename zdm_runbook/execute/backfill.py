"""The backfill engine: a migrate step's UPDATE in bounded keyset batches that survive anything.

Each batch is one short transaction: the next key range and the UPDATE of its rows whose target
still differs (``IS DISTINCT FROM``), in one statement, and the checkpoint in the ledger, all
committed together, in two round trips with statements prepared once (:mod:`.batch_sql`); the
timeouts, and the settings of the dual-write function (:mod:`.pinned`), are the session's. So a
crash, a SIGKILL or a lost connection loses at most the batch in flight, and a re-run resumes
from the last committed one; a re-run after completion updates nothing. The batch size adapts
toward a target duration; the engine holds while told to, and for the health holds of
:mod:`.holds`. Several backfills on one table share one pass (:mod:`.walk`): one row version per
row, each with its own ledger row.

Defaults, and why: a batch targets 0.2 s (pt-online-schema-change and pt-table-checksum aim their
chunks at 0.5 s; a shorter batch holds its row locks for less time, so an app UPDATE that meets
one waits less), grows by at most 20% per batch while the app shares the server (GitLab's batch
optimizer takes the same care not to overshoot) and up to fourfold while it is alone (from the
5,000-row start to the 20,000-row ceiling in one step: a 100,000-row pass alone ran at 0.90x the
single UPDATE's rate against 0.84x when it doubled, the medians of six alternating runs), halves
on a timeout, and stays within 100..20,000 rows: the ceiling keeps the rows locked at any moment a
small share of a large table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from zdm_runbook.core.connect import connect, redact, set_timeouts
from zdm_runbook.core.errors import ConfigError, DatabaseError
from zdm_runbook.execute.batch_sql import BatchStatements
from zdm_runbook.execute.duty import DutyController, Sampler
from zdm_runbook.execute.fill_settings import BackfillSettings, backfill_settings
from zdm_runbook.execute.holds import hold_reason, read_health
from zdm_runbook.execute.keyset import Key, TableKey, table_key
from zdm_runbook.execute.pinned import pin
from zdm_runbook.execute.progress import Batch, State, steered
from zdm_runbook.execute.wal_pace import WalPace
from zdm_runbook.execute.walk import Walk
from zdm_runbook.ledger import checkpoints
from zdm_runbook.plan.steps import BackfillSpec, Step

__all__ = ["BackfillEngine", "BackfillError", "BackfillSettings", "backfill_settings"]
log = logging.getLogger(__name__)
Conn = psycopg.Connection[Any]
# lock_timeout and statement_timeout: retry the range, smaller; a deadlock: retry it as it was.
SHRINK_ON = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)
RETRY_ON = (*SHRINK_ON, psycopg.errors.DeadlockDetected)
GROWTH, GROWTH_ALONE = 1.2, 4.0
CHECK_EVERY = 0.5  # seconds between checks of the controls, replica lag and the lock queue
Listener = Callable[[State], None]


class BackfillError(DatabaseError):
    """The backfill stopped; what is committed stays, and a re-run resumes from its checkpoint."""


class BackfillEngine:
    """Runs backfill steps on one table to completion in one pass (see the module text); ``states``
    (one per step, ``state`` the first) are live while it runs, and each goes to ``on_batch``."""

    def __init__(
        self,
        dsn: str,
        change_id: str,
        steps: Step | Sequence[Step],
        settings: BackfillSettings | None = None,
        on_batch: Listener | None = None,
    ) -> None:
        self.steps = [steps] if isinstance(steps, Step) else list(steps)
        specs = [st.backfill for st in self.steps]
        fills = [spec for spec in specs if spec is not None]
        if not fills or len(fills) != len(specs):
            raise ConfigError(f"not a backfill: {', '.join(st.key for st in self.steps) or 'no step'}")
        try:
            self.walk = Walk(tuple(fills))
        except ValueError as exc:
            raise ConfigError(f"{' and '.join(st.key for st in self.steps)}: {exc}") from None
        self.dsn, self.change_id = dsn, change_id
        self.spec: BackfillSpec = fills[0]
        self.label = " + ".join(st.key for st in self.steps)
        self.settings = settings or BackfillSettings()
        self.on_batch = on_batch
        self.conn: Conn | None = None
        self.key: TableKey | None = None
        self.statements: BatchStatements | None = None
        self.states = [State(str(self.spec.table), None, step=st.key) for st in self.steps]
        self.table_oid, self._checked = 0, float("-inf")
        self._control: dict[str, Any] = {}
        self._busy_seen: bool | None = None  # None: no check yet
        self._wal = WalPace(self.settings.max_wal_mb_per_s)
        self._sampler: Sampler | None = None  # started when the app is first seen
        shared_cap = min(self.settings.busy_max_batch_size, self.settings.max_batch_size)
        self.duty = DutyController(
            self.settings.busy_duty,
            self.settings.max_app_slowdown,
            shared_cap,
            self.settings.min_batch_size,
            shared_cap,
            max_duty=self.settings.busy_max_duty,
        )

    @property
    def state(self) -> State:
        """The first step's progress (the others differ only in their rows updated)."""
        return self.states[0]

    def _share(self, **values: Any) -> None:
        """Set what every step's progress has in common: the pass's activity, holds, batch size."""
        for state in self.states:
            for name, value in values.items():
                setattr(state, name, value)

    def _tell(self) -> None:
        if self.on_batch:
            for state in self.states:
                self.on_batch(state)

    # --- connection ---

    def _connect(self) -> Conn:
        """The engine's own connection, its batches' timeouts set once for the session (a run refuses
        transaction poolers: the session is ours), and no row hidden unseen (inspect/row_security)."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect(self.dsn, phase="migrate:backfill", autocommit=True, row_security=False)
            set_timeouts(self.conn, self.settings.lock_timeout, self.settings.statement_timeout, local=False)
            pin(self.conn, self.walk.specs)
        return self.conn

    def _lost(self) -> bool:
        """After a failed batch: whether the connection is gone, asked of it (one terminated
        mid-pipeline is not always marked broken: "cannot exit pipeline mode while busy")."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            return True
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error:
            return True
        return False

    def _reconnect(self, why: str) -> Conn:
        delay = 0.5
        for attempt in range(1, self.settings.reconnect_attempts + 1):
            log.warning("backfill %s: connection lost (%s); reconnecting (%d)", self.label, why, attempt)
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            try:
                conn = self._connect()
            except (DatabaseError, psycopg.OperationalError):  # refused, or lost again at once
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._share(reconnects=self.state.reconnects + 1)
            return conn
        raise BackfillError(f"backfill {self.label}: connection lost and not regained: {why}")

    # --- setup ---

    def prepare(self) -> tuple[Key | None, Key | None]:
        """Find the key, check each UPDATE's plan (bad expressions fail here, before any batch), and
        start or resume the ledger rows; return the checkpoint and the upper bound.

        The pass resumes where it stopped when every step's row stopped at the same batch (they
        commit together); otherwise it starts over for all of them, and the rows already right are
        read, not written (the UPDATE skips a row whose target already matches)."""
        conn = self._connect()
        paths = [f"operations[{st.operation}].{st.key.split('-', 2)[1]}" for st in self.steps]
        self.key = table_key(conn, self.spec.table, f"{paths[0]}.table")
        self.statements = BatchStatements(self.key, self.walk)
        oid = conn.execute(
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::oid::int8",
            [self.spec.table.schema, self.spec.table.name],
        ).fetchone()
        self.table_oid = int(oid[0]) if oid and oid[0] else 0
        self.statements.explain(conn, paths)
        rows = [checkpoints.checkpoint(conn, self.change_id, st.key) for st in self.steps]
        open_rows = [row for row in rows if row is not None and row.status != "done"]
        if len(open_rows) == len(rows) and len({(str(r.last_key), str(r.upper_key)) for r in open_rows}) == 1:
            for st, state, row in zip(self.steps, self.states, open_rows, strict=True):  # stopped: resume
                checkpoints.reopen(conn, self.change_id, st.key)
                state.rows_scanned, state.rows_updated = row.rows_scanned, row.rows_updated
                state.resumed_from = row.rows_scanned
            self._estimate(conn)
            return open_rows[0].last_key, open_rows[0].upper_key
        upper_row = conn.execute(self.key.last_key()).fetchone()
        upper = upper_row[0] if upper_row else None
        estimate = self._estimate(conn)
        for st in self.steps:
            checkpoints.start(
                conn, self.change_id, st.key, str(self.spec.table), list(self.key.columns), upper, estimate
            )
        return None, upper

    def _estimate(self, conn: Conn) -> int | None:
        row = conn.execute(
            "SELECT reltuples::int8 FROM pg_class"
            " WHERE oid = to_regclass(format('%%I.%%I', %s::text, %s::text))",
            [self.spec.table.schema, self.spec.table.name],
        ).fetchone()
        self._share(rows_estimate=int(row[0]) if row and row[0] is not None and row[0] >= 0 else None)
        return self.state.rows_estimate

    # --- the loop ---

    def run(self) -> State:
        """Batch until the captured upper bound is passed; return the final state. A
        :class:`BackfillError` marks the ledger row ``failed`` (what is committed stays)."""
        try:
            return self._run()
        except BackfillError:
            self._mark("failed")
            raise
        except BaseException:  # Jupyter's Stop, Ctrl-C (psycopg cancels the statement; it rolls back)
            self._mark("interrupted")
            raise

    def _mark(self, status: str) -> None:
        self._share(doing=f"{status}: what is committed stays; run again to resume")
        try:  # on a connection of its own: the batch's may be the one that was stopped
            with connect(self.dsn, phase="migrate:backfill", autocommit=True) as conn:
                for st in self.steps:
                    checkpoints.mark_stopped(conn, self.change_id, st.key, status)
        except (psycopg.Error, DatabaseError):  # the error being raised says more than this one
            log.warning("backfill %s: could not mark the ledger rows %s", self.label, status)

    def _run(self) -> State:
        lower, upper = self.prepare()
        size = self.settings.start_batch_size
        failures, lost = 0, False
        control: dict[str, Any] = {}
        while upper is not None:
            try:
                if lost:  # prepared again in the loop: a kill during it is one more lost connection
                    lower, upper, lost = *self.prepare(), False
                    continue
                self._share(doing="batching")
                throttled, control = self._throttle()
                size = control.get("batch_size") or size
                if self.state.app_busy and not control.get("batch_size"):
                    size = min(size, self.duty.batch_cap)
                batch = self._timed_batch(lower, upper, size, failures, throttled)
            except psycopg.Error as exc:
                if isinstance(exc, RETRY_ON):
                    failures += 1
                    self._share(retries=self.state.retries + 1)
                    if failures > self.settings.max_failures:
                        raise BackfillError(
                            f"backfill {self.label}: {failures} batches in a row failed"
                            f" ({redact(str(exc)).strip()}); what is committed stays, re-run to resume",
                            exc.sqlstate,
                        ) from exc
                    if isinstance(exc, SHRINK_ON):
                        size = max(self.settings.min_batch_size, size // 2)
                    time.sleep(min(5.0, 0.1 * 2**failures))
                    continue
                if self._lost():
                    self._reconnect(redact(str(exc)).strip())
                    lost = True
                    continue
                raise BackfillError(
                    f"backfill {self.label} failed: {redact(str(exc)).strip()}", exc.sqlstate
                ) from exc
            if batch is None:
                break
            failures = 0
            lower = batch.upper
            size = self._next_size(size, batch.seconds)
            pause_ms = control.get("pause_ms")
            pause = self.settings.pause if pause_ms is None else pause_ms / 1000
            if self.state.app_busy and pause_ms is None:  # share the server: see .duty
                pause = max(pause, self._shared_pause(batch.seconds))
            wal_pause = self._wal.pause_after(batch.rows_scanned, batch.seconds)
            self._share(paced=self._wal.describe(wal_pause) if wal_pause > pause else None)
            time.sleep(max(pause, wal_pause))
        try:
            self._finish()
        except psycopg.OperationalError as exc:
            self._reconnect(redact(str(exc)).strip())
            self._finish()
        return self.state

    def _timed_batch(
        self, lower: Key | None, upper: Key, size: int, retries: int, throttled: float
    ) -> Batch | None:
        """A batch, with the sampler told while it runs (its samples then count as batching)."""
        if self._sampler is None and self.state.app_busy and self.settings.busy_duty < 1.0:
            self._sampler = Sampler(self.dsn)
            self._sampler.start()
        if self._sampler is not None:
            self._sampler.batching(True)
        try:
            return self._batch(lower, upper, size, retries, throttled)
        finally:
            if self._sampler is not None:
                self._sampler.batching(False)

    def _shared_pause(self, batch_seconds: float) -> float:
        """The rest after a batch while the app shares the server, from the duty controller."""
        if self._sampler is not None:
            self.duty.observe(*self._sampler.window())
        pause = self.duty.pause_after(batch_seconds)
        text = self.duty.describe(pause)
        self._share(doing=text, sharing=text)
        return pause

    def _next_size(self, size: int, seconds: float) -> int:
        """Toward the target duration: grow by at most 20% (fourfold while alone on the server),
        shrink in proportion, within bounds."""
        wanted = size * self.settings.target_batch / max(seconds, 1e-3)
        new = min(wanted, size * (GROWTH if self.state.app_busy else GROWTH_ALONE))
        return int(max(self.settings.min_batch_size, min(self.settings.max_batch_size, new)))

    def _throttle(self) -> tuple[float, dict[str, Any]]:
        """Wait while a health hold applies (:mod:`.holds`): paused, a vacuum of the table, replica
        lag, WAL rate, a lock queue on the table.

        Checked at most every ``CHECK_EVERY`` seconds (not per batch: one round trip fewer each)."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY and not self._wal.unknown:
            return 0.0, self._control
        waited = 0.0
        while True:
            conn = self._connect()
            steers = [checkpoints.controls(conn, self.change_id, st.key) for st in self.steps]
            if any(steer is None for steer in steers):
                raise BackfillError(f"backfill {self.label}: its ledger row disappeared")
            given = [steer for steer in steers if steer is not None]
            health = read_health(conn, self.table_oid)
            paused = any(steer.paused for steer in given)  # a pause of any of them holds the pass
            batch_size = next((steer.batch_size for steer in given if steer.batch_size), None)
            pause_ms = next((steer.pause_ms for steer in given if steer.pause_ms is not None), None)
            # Hysteresis: the app counts as busy (or quiet) once two checks in a row agree; the
            # first check, before the first batch, decides alone (gentle from the first batch).
            busy_now = bool(health.busy_sessions) and self.settings.busy_duty < 1.0
            if busy_now == self._busy_seen or self._busy_seen is None:
                self._share(app_busy=busy_now)
            self._busy_seen = busy_now
            hold = hold_reason(
                health,
                str(self.spec.table),
                paused=paused,
                max_replay_lag=self.settings.max_replay_lag,
                wal_rate=self._wal.over(health.at, health.wal_bytes, self.state.rows_scanned),
                max_wal_mb_per_s=self.settings.max_wal_mb_per_s,
            )
            reason = hold.text if hold else None
            if reason != self.state.paused:  # the ledger says why it waits: written when that changes
                for st in self.steps:
                    checkpoints.set_hold(conn, self.change_id, st.key, reason)
            self._share(paused=reason)
            if hold is None:
                self._checked = time.monotonic()
                self._control = {"batch_size": batch_size, "pause_ms": pause_ms}
                self._share(steered=steered(batch_size, pause_ms))
                return waited, self._control
            self._tell()
            time.sleep(CHECK_EVERY)  # held: the next check, then
            waited, held = waited + CHECK_EVERY, self.state.held
            self._share(held={**held, hold.kind: held.get(hold.kind, 0.0) + CHECK_EVERY})

    def _batch(
        self, lower: Key | None, upper: Key, size: int, retries: int, throttled: float
    ) -> Batch | None:
        if self.statements is None:  # pragma: no cover - prepare() sets it
            raise ConfigError("prepare() first")
        conn = self._connect()
        started = time.monotonic()
        # Two round trips: BEGIN with the batch's one statement (and, beside the app, a read of the
        # last range: see batch_sql), then the checkpoint with the COMMIT (pipeline mode).
        with conn.pipeline(), conn.transaction():
            found = self.statements.batch(conn, lower, upper, size, settle=self.state.app_busy)
            if found is None:
                return None
            end, scanned, updated = found
            seconds = time.monotonic() - started
            recorded = [
                checkpoints.record_batch(
                    conn,
                    self.change_id,
                    st.key,
                    lower=lower,
                    upper=end,
                    rows_scanned=scanned,
                    rows_updated=rows,
                    batch_size=size,
                    seconds=seconds,
                    retries=retries,
                    throttled_s=throttled,
                )
                for st, rows in zip(self.steps, updated, strict=True)
            ]
        at = time.monotonic()
        for state, cur, rows in zip(self.states, recorded, updated, strict=True):
            row = cur.fetchone()
            number = int(row[0]) if row else 0
            state.batches.append(
                Batch(number, lower, end, scanned, rows, size, seconds, retries, throttled, at)
            )
            state.rows_scanned += scanned
            state.rows_updated += rows
            state.batch_size = size
        self._tell()
        return self.state.batches[-1]

    def _finish(self) -> None:
        conn = self._connect()
        for st in self.steps:
            checkpoints.mark_done(conn, self.change_id, st.key)
        self._share(finished=time.monotonic(), rows_estimate=self.state.rows_scanned, paused=None)
        self._tell()

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
        if self.conn is not None:
            self.conn.close()

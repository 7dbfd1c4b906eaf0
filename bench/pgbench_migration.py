"""A change on ``pgbench_accounts`` while pgbench's own TPC-B-like script runs: ours vs naive.

Two changes (``--change``):

  cents  a new NOT NULL column ``abalance_cents`` backfilled from ``abalance``, with its index,
         and ``filler`` (which pgbench's script never reads) retyped to text by ``change_type``;
         naive: ADD COLUMN; one UPDATE; SET NOT NULL; CREATE INDEX; ALTER COLUMN filler TYPE text
  key    ``pgbench_accounts.aid`` int -> bigint by ``change_key_type``, with ``pgbench_history.aid``
         referencing it (``pgbench -i --foreign-keys``); naive: ALTER COLUMN aid TYPE bigint

Each run on a freshly initialised database (``pgbench -i -s SCALE``), pgbench running throughout
with ``--clients`` clients in 2 s rounds whose per-transaction latencies are logged:

  baseline   no change: pgbench alone, for as long as ours took
  ours       the four phases with zdm-runbook's guarded executor and backfill engine (for the key
             change, the swap transaction gets a window of its own, read from the ledger)
  naive      the same change as plain statements

First at a fixed rate, as production runs: pgbench alone at full speed for 10 s measures the
throughput, and pgbench then runs at half of it (``--rate``; its latencies include the wait for
the schedule, as an app's users would see them): baseline and ours. In the same run, ours also
runs without pgbench, so the backfill's rows/s under load is compared with its own rows/s on an
idle server. At the fixed rate the app also runs alone for ``--alone`` seconds just before the
change and just after it, in the same pgbench run: "before" is a baseline beside the change in
time (the separate baseline run is minutes away), and "after" is the app on the changed schema,
whose own cost (an index the app's updates now maintain, through the dual-write until contract)
is the change's, not the migration's. Then at full speed (both cores saturated: CPU sharing more
than the migration): baseline, ours and naive, as before (``--no-full`` skips them).

Printed: pgbench's failed transactions (goal 0), and per step its p50 / p99 latency against the
baseline's, with the ratios, and the longest single transaction (the worst stall an app saw); the
backfill's rows/s from the ledger, and where the loaded pass's time went (in batches, held,
resting). Below the phases, the same for parts of them (the backfill pass, the verification, the
swap), for each stretch in which an autovacuum worker was at work on the database, and for each
checkpoint (sampled four times a second): a vacuum of the backfill's dead row versions, or a
checkpoint writing its pages, is the change's cost to the app, not the engine's CPU, and these
lines tell them apart. Per window of ours: the CPU time the host stole, the most dirty page cache
the kernel held, the WAL written and the share of the window a checkpoint ran; the baseline run's
checkpoints are listed too. ``--fsync`` runs the server with its writes reaching the disk, and
``--backfill '{"max_wal_mb_per_s": 12}'`` gives the backfill settings.

    python bench/pgbench_migration.py                      # scale 10 (1,000,000 accounts)
    python bench/pgbench_migration.py --change key --scale 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from backfill import cpu_times  # a sibling bench script: bench/ is the script's sys.path[0]

from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.demo.pgbench import PgBench
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.inspect.blockers import describe
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

SPEC = """
change: pgbench-cents
operations:
  - add_not_null_column: {table: pgbench_accounts, column: abalance_cents, type: bigint, default: "0",
                          backfill: "abalance::bigint * 100"}
  - create_index: {table: pgbench_accounts, name: pgbench_accounts_cents_idx, columns: [abalance_cents]}
  - change_type: {table: pgbench_accounts, column: filler, new_column: filler_text, type: text,
                  using: "filler::text", reverse: "filler_text::character(84)"}
"""
SPEC_KEY = """
change: pgbench-aid-bigint
operations:
  - change_key_type: {table: pgbench_accounts, column: aid}
"""
NAIVE_KEY = [("alter type (rewrite)", "ALTER TABLE pgbench_accounts ALTER COLUMN aid TYPE bigint")]
NAIVE = [
    ("add column", "ALTER TABLE pgbench_accounts ADD COLUMN abalance_cents bigint"),
    ("update all rows", "UPDATE pgbench_accounts SET abalance_cents = abalance::bigint * 100"),
    ("set not null", "ALTER TABLE pgbench_accounts ALTER COLUMN abalance_cents SET NOT NULL"),
    ("create index", "CREATE INDEX pgbench_accounts_cents_idx ON pgbench_accounts (abalance_cents)"),
    ("retype (rewrite)", "ALTER TABLE pgbench_accounts ALTER COLUMN filler TYPE text"),
]


def init(server: LocalServer, dbname: str, scale: int, foreign_keys: bool = False) -> str:
    admin = server.dsn()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {dbname}")
    subprocess.run(
        [
            str(server.bin_dir / "pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale),
            *(["--foreign-keys"] if foreign_keys else []),
            "-h",
            str(server.socket_dir),
            "-p",
            str(server.port),
            "-U",
            "postgres",
            dbname,
        ],
        check=True,
        capture_output=True,
    )
    with psycopg.connect(server.dsn(dbname), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    # The load dirtied the page cache; the kernel wrote it back over the next 30 s, slowing
    # whatever ran then (the baseline, a phase). Written now, every run starts from a clean cache.
    os.sync()
    return server.dsn(dbname)


Windows = list[tuple[str, float, float]]


def under_pgbench(
    server: LocalServer,
    dbname: str,
    scale: int,
    clients: int,
    work: Callable[[Windows], None],
    rate: int | None = None,
) -> tuple[PgBench, Windows]:
    """Run ``work`` while pgbench runs (at ``rate`` tx/s, or full speed); ``work`` appends a
    (label, start, end) window per step."""
    windows: Windows = []
    bench = PgBench(
        server, dbname, scale * 100_000, lambda: "run", clients=clients, rate=rate, builtin="tpcb-like"
    )
    bench.start()
    time.sleep(4)  # warm-up, not measured
    try:
        work(windows)
    finally:
        time.sleep(2.5)
        bench.stop()
    return bench, windows


def _timed(windows: Windows, label: str, step: Callable[[], object]) -> None:
    start = time.time()
    step()
    windows.append((label, start, time.time()))


BEFORE, AFTER = "app alone, before", "app alone, after"
AUTOVACUUM = "  autovacuum"
CHECKPOINT = "  checkpoint"


class Noted(NamedTuple):
    """What :class:`ServerWatch` saw in one window."""

    stolen: float  # the share (%) of the machine's CPU time the host stole
    dirty_mb: float  # the most dirty page cache the kernel held to write back
    wal_mb: float  # the WAL the server wrote
    checkpointing: float  # the share (%) of samples with a checkpoint running


NOTED: dict[str, Noted] = {}  # per window label, for the report


def dirty_mb() -> float:
    """The kernel's dirty and under-writeback page cache, in MB (0 where there is no /proc/meminfo):
    the server's writes that the kernel has still to write to disk, and will, whatever runs then."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return 0.0
    fields = {line.split(":")[0]: line.split()[1] for line in lines if ":" in line}
    return (int(fields.get("Dirty", 0)) + int(fields.get("Writeback", 0))) / 1024


class ServerWatch:
    """Samples the database's autovacuum workers four times a second while the change runs, and
    gives each stretch of one worker's work a window of its own: the app's tail while a vacuum of
    the table's dead row versions shares the cores is the change's cost, but not the engine's.
    It samples the machine's CPU time too (:func:`cpu_times`), for the share the host stole, the
    kernel's dirty page cache, the server's WAL position and whether a checkpoint runs."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.stop = dsn, threading.Event()
        self.samples: list[tuple[float, str]] = []
        self.cpu: list[tuple[float, int, int]] = [(time.time(), *cpu_times())]
        self.dirty: list[tuple[float, float]] = []
        self.wal: list[tuple[float, float]] = []  # (when, WAL position in bytes)
        self.checkpoints: list[float] = []  # when a checkpoint was seen running
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def most_dirty(self, window: tuple[str, float, float]) -> float:
        """The most dirty page cache (MB) sampled in ``window``."""
        return max((mb for at, mb in self.dirty if window[1] <= at <= window[2]), default=0.0)

    def wal_mb(self, window: tuple[str, float, float]) -> float:
        """The WAL the server wrote between the samples around ``window``, in MB."""
        _, start, end = window
        inside = [w for at, w in self.wal if start <= at <= end]
        return (max(inside) - min(inside)) / 1e6 if len(inside) > 1 else 0.0

    def checkpointing(self, window: tuple[str, float, float]) -> float:
        """The share (%) of the window's samples that saw a checkpoint running."""
        _, start, end = window
        inside = [at for at, _ in self.wal if start <= at <= end]
        seen = [at for at in self.checkpoints if start <= at <= end]
        return 100 * len(seen) / len(inside) if inside else 0.0

    def stolen(self, window: tuple[str, float, float]) -> float:
        """The share (%) of the machine's CPU time the host stole between the samples around ``window``."""
        _, start, end = window
        before = max((c for c in self.cpu if c[0] <= start), default=self.cpu[0])
        after = min((c for c in self.cpu if c[0] >= end), default=self.cpu[-1])
        total = after[2] - before[2]
        return 100 * (after[1] - before[1]) / total if total > 0 else 0.0

    def __enter__(self) -> ServerWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _sample(self) -> None:
        # Named as the engine's sessions are, so that its duty sampler does not count it as the app's.
        with psycopg.connect(self.dsn, autocommit=True, application_name="zdm_runbook-bench") as conn:
            while not self.stop.wait(0.25):
                self.cpu.append((time.time(), *cpu_times()))
                self.dirty.append((time.time(), dirty_mb()))
                for (query,) in conn.execute(
                    "SELECT query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                    " AND datname = current_database()"
                ):
                    self.samples.append((time.time(), str(query).removeprefix("autovacuum: ")))
                row = conn.execute(
                    "SELECT (SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'checkpointer'),"
                    " (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8"
                ).fetchone()
                if row:
                    self.wal.append((time.time(), float(row[1])))
                    if row[0] != "CheckpointerMain":  # the checkpointer's idle wait: else a checkpoint runs
                        self.checkpoints.append(time.time())

    def checkpoint_windows(self) -> Windows:
        """``(label, start, end)`` per stretch in which a checkpoint was seen running (samples at
        most 0.5 s apart): on a server whose writes reach the disk, the app's own tail lives there."""
        stretches: list[tuple[float, float]] = []
        for at in self.checkpoints:
            if stretches and at - stretches[-1][1] <= 0.5:
                stretches[-1] = (stretches[-1][0], at)
            else:
                stretches.append((at, at))
        return [(f"{CHECKPOINT} {i + 1}", a, b) for i, (a, b) in enumerate(stretches) if b > a]

    def note(self, windows: Windows) -> None:
        """Keep, per window, what the host stole, the most dirty page cache, the WAL written and
        the checkpoints' share, for the report."""
        NOTED.update(
            {
                w[0]: Noted(self.stolen(w), self.most_dirty(w), self.wal_mb(w), self.checkpointing(w))
                for w in windows
            }
        )

    def windows(self) -> Windows:
        """``(label, start, end)`` per stretch of one worker's query, samples at most 0.5 s apart."""
        stretches: list[tuple[str, float, float]] = []
        for at, query in sorted(self.samples, key=lambda s: (s[1], s[0])):
            if stretches and stretches[-1][0] == query and at - stretches[-1][2] <= 0.5:
                stretches[-1] = (query, stretches[-1][1], at)
            else:
                stretches.append((query, at, at))
        stretches = sorted((w for w in stretches if w[2] > w[1]), key=lambda w: w[1])
        return [(f"{AUTOVACUUM} {i + 1}: {q}", a, b) for i, (q, a, b) in enumerate(stretches)]


def ours(
    dsn: str, spec: str, alone: float = 0.0, settings: dict[str, Any] | None = None
) -> Callable[[Windows], None]:
    """The four phases; with ``alone`` seconds, the app alone just before them and just after them
    (on the changed schema), in the same pgbench run. ``settings``: the backfill's, if not its defaults."""
    plan = build_plan(parse_change(spec))

    def run(windows: Windows) -> None:
        with ServerWatch(dsn) as watch:
            if alone:
                _timed(windows, BEFORE, lambda: time.sleep(alone))
            for phase in Phase:
                _timed(
                    windows,
                    phase.value,
                    partial(
                        execute_phase,
                        plan,
                        phase,
                        dsn,
                        backfill_settings=settings,
                        on_batch=lambda state: None,
                    ),
                )
            if alone:
                time.sleep(1.0)  # what contract held up finishes first
                _timed(windows, AFTER, lambda: time.sleep(alone))
        with psycopg.connect(dsn) as conn:  # the swap's attempts and the backfill, as the ledger has them
            swap = conn.execute(
                "SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(ended_at)), count(*)"
                " FROM zdm.step_attempts WHERE step_key LIKE '%%-swap'"
            ).fetchone()
            for key, number, outcome, rung, blockers in conn.execute(
                "SELECT step_key, attempt, outcome, settings->>'lock_timeout', blockers"
                " FROM zdm.step_attempts WHERE outcome NOT IN ('applied', 'skipped')"
                " OR (outcome = 'applied' AND message LIKE 'cancelled autovacuum%%')"
                " ORDER BY attempt_id"
            ):  # the attempts that gave up, and who they met; those an autovacuum was cancelled for
                who = "; ".join(describe(b) for b in blockers) or "no blocker seen"
                if outcome == "applied":
                    print(f"  {key} attempt {number}: applied once an autovacuum was cancelled")
                else:
                    print(f"  {key} attempt {number}: {outcome} after lock_timeout {rung} s ({who[:200]})")
            fill = conn.execute(
                "SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(finished_at))"
                " FROM zdm.backfills"
            ).fetchone()
        if swap and swap[0] is not None:
            # A transaction the swap held up finishes just after it: count those finishing 1 s later.
            windows.append((f"  swap ({swap[2]} attempt(s))", float(swap[0]), float(swap[1]) + 1.0))
        migrate = next((w for w in windows if w[0] == Phase.MIGRATE.value), None)
        if fill and fill[0] is not None and migrate is not None:  # migrate: the pass, then verifying
            windows.append(("  backfill pass", float(fill[0]), float(fill[1])))
            windows.append(("  verification", float(fill[1]), migrate[2]))
        vacuums = watch.windows()
        if fill and fill[0] is not None:  # the backfill holds while a vacuum of its table runs
            during = sum(
                max(0.0, min(end, float(fill[1])) - max(start, float(fill[0])))
                for label, start, end in vacuums
                if "pgbench_accounts" in label
            )
            print(f"  autovacuum of pgbench_accounts during the pass: {during:.1f} s")
        windows.extend(vacuums + watch.checkpoint_windows())
        watch.note(windows)

    return run


def naive(dsn: str, statements: list[tuple[str, str]]) -> Callable[[Windows], None]:
    def run(windows: Windows) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for label, statement in statements:
                _timed(windows, label, lambda s=statement: conn.execute(s))  # type: ignore[misc]

    return run


def idle(dsn: str, seconds: float) -> Callable[[Windows], None]:
    def run(windows: Windows) -> None:
        with ServerWatch(dsn) as watch:
            _timed(windows, "baseline", lambda: time.sleep(seconds))
        windows.extend(watch.checkpoint_windows())
        watch.note(windows[:1])

    return run


def fill_rate(dsn: str) -> float:
    """The backfill's rows/s, from the ledger: rows walked over the pass's wall time."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT max(rows_scanned), extract(epoch FROM max(finished_at) - min(started_at))::float8"
            " FROM zdm.backfills"
        ).fetchone()
    return float(row[0]) / float(row[1]) if row and row[0] and row[1] else 0.0


def fill_shape(dsn: str) -> str:
    """Where the pass's time went, from the ledger: its batches, their mean size, the share of the
    pass's wall time spent in them, and the rows/s within them (the duty times that is the rate)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), avg(b.rows_scanned), sum(b.seconds), sum(b.rows_scanned),"
            " sum(b.throttled_s), extract(epoch FROM max(f.finished_at) - min(f.started_at))::float8"
            " FROM zdm.backfill_batches b JOIN zdm.backfills f USING (change_id, step_key)"
            " WHERE step_key = (SELECT min(step_key) FROM zdm.backfills)"  # one pass: one step's rows
        ).fetchone()
    if not row or not row[0]:
        return "no batches"
    batches, mean, busy, rows, held, wall = row
    return (
        f"{batches:,} batches of {float(mean):,.0f} rows on average; in batches {100 * busy / wall:.0f}% of"
        f" the pass's {wall:.1f} s, held {held:.1f} s; {rows / busy:,.0f} rows/s within batches"
    )


def checkpoint_log(server: LocalServer, start: float, end: float) -> list[str]:
    """The server log's checkpoint lines (``log_checkpoints`` is on by default) between ``start``
    and ``end`` (epoch seconds): what started each (``time``, or ``wal`` when WAL reached
    ``max_wal_size`` first and the checkpoint is paced by WAL, not time), and what it wrote and how
    long its write and sync phases took."""
    found = []
    for text in (server.data_dir / "server.log").read_text(errors="replace").splitlines():
        if "checkpoint" not in text or " LOG: " not in text:
            continue
        try:  # "2026-12-03 16:50:00.123 UTC [123] LOG:  checkpoint starting: wal"
            at = datetime.strptime(" ".join(text.split()[:3]), "%Y-%m-%d %H:%M:%S.%f %Z")
        except ValueError:
            continue
        if start <= at.replace(tzinfo=UTC).timestamp() <= end:
            found.append(f"{text.split()[1][:8]} {text.split(' LOG: ', 1)[1].strip()}")
    return found


def full_speed(server: LocalServer, dbname: str, scale: int, clients: int) -> float:
    """pgbench's throughput alone at full speed, tx/s (10 s after the warm-up)."""
    bench, windows = under_pgbench(server, dbname, scale, clients, idle(server.dsn(dbname), 10))
    _, start, end = windows[0]
    return sum(1 for at, _ in bench.finished if start <= at < end) / (end - start)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale: 100,000 accounts each (10)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients (4)")
    parser.add_argument("--pg-bin", type=Path, default=None, help="PostgreSQL binaries (embedded 18)")
    parser.add_argument("--change", choices=("cents", "key"), default="cents", help="which change (cents)")
    parser.add_argument("--no-full", action="store_true", help="skip the full-speed runs")
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="run the server with fsync on (the embedded one runs with it off): writes reach the disk",
    )
    parser.add_argument(
        "--backfill",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="the backfill's settings, as the migrate notebook takes them, e.g. '{\"max_wal_mb_per_s\": 4}'",
    )
    parser.add_argument(
        "--alone",
        type=float,
        default=10.0,
        help="at the fixed rate, seconds of the app alone just before the change and just after it,"
        " in the same pgbench run (10; 0: none)",
    )
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=0.0,
        help="at the fixed rate, run the baseline (the app alone, no change) at least this long, e.g."
        " long enough to meet a checkpoint of its own, whose window the report shows (0: as long as"
        " the change took)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    key = args.change == "key"
    spec, statements = (SPEC_KEY, NAIVE_KEY) if key else (SPEC, NAIVE)
    runs: dict[str, tuple[PgBench, Windows]] = {}
    with tempfile.TemporaryDirectory(prefix="zdm-bench-") as folder:
        server = LocalServer(
            data_dir=Path(folder) / "pg", bin_dir=args.pg_bin or embedded_bin_dir(), fsync=args.fsync
        )
        server.start()
        try:
            accounts = args.scale * 100_000
            print(
                f"{server.version()}, scale {args.scale} ({accounts:,} accounts), {args.clients} clients,"
                f" change {args.change}, fsync {'on' if args.fsync else 'off'},"
                f" backfill {args.backfill or 'defaults'}"
            )
            init(server, "b_full", args.scale, key)
            rate = max(1, round(full_speed(server, "b_full", args.scale, args.clients) / 2))
            dsn = init(server, "b_quiet", args.scale, key)
            ours(dsn, spec, settings=args.backfill)([])
            quiet = fill_rate(dsn)
            fixed: dict[str, tuple[PgBench, Windows]] = {}
            dsn = init(server, "b_ours_r", args.scale, key)
            fixed["ours"] = under_pgbench(
                server, "b_ours_r", args.scale, args.clients, ours(dsn, spec, args.alone, args.backfill), rate
            )
            loaded, shape = fill_rate(dsn), fill_shape(dsn)
            took = max(end for _, _, end in fixed["ours"][1]) - fixed["ours"][1][0][1]
            dsn = init(server, "b_base_r", args.scale, key)
            fixed["baseline"] = under_pgbench(
                server,
                "b_base_r",
                args.scale,
                args.clients,
                idle(dsn, max(took, 10, args.baseline_seconds)),
                rate,
            )
            # Printed now: the full-speed runs' windows have the same labels.
            print(f"\n== at a fixed rate: {rate} tx/s, half of pgbench's full-speed throughput ==")
            report(fixed)
            for name, (_, steps) in fixed.items():
                print(f"  the server log's checkpoints during {name} (UTC):")
                lines = checkpoint_log(server, steps[0][1], max(end for _, _, end in steps))
                print("\n".join(f"    {line}" for line in lines) or "    none")
            if quiet:
                print(
                    f"  backfill: {loaded:,.0f} rows/s under this load, {quiet:,.0f} rows/s without load"
                    f" ({loaded / quiet:.0%} of it)\n  the pass under load: {shape}"
                )
            if not args.no_full:
                dsn = init(server, "b_ours", args.scale, key)
                runs["ours"] = under_pgbench(
                    server, "b_ours", args.scale, args.clients, ours(dsn, spec, settings=args.backfill)
                )
                full = fill_rate(dsn)
                dsn = init(server, "b_naive", args.scale, key)
                runs["naive"] = under_pgbench(
                    server, "b_naive", args.scale, args.clients, naive(dsn, statements)
                )
                took = max(end for _, _, end in runs["ours"][1]) - runs["ours"][1][0][1]
                dsn = init(server, "b_base", args.scale, key)
                runs["baseline"] = under_pgbench(
                    server, "b_base", args.scale, args.clients, idle(dsn, max(took, 10))
                )
        finally:
            server.destroy()
    if runs:
        print("\n== at full speed ==")
        report(runs)
        if quiet:
            print(
                f"  backfill: {full:,.0f} rows/s at full load ({full / quiet:.0%} of its rate without load)"
            )
    return 0


def report(runs: dict[str, tuple[PgBench, Windows]]) -> None:
    base, windows = runs["baseline"]
    b_n, b50, b99 = base.by_window(windows)["baseline"]
    b_max = _longest(base, windows[0])
    print(
        f"\nbaseline (no change): {b_n:,} transactions, p50 {b50:.2f} ms, p99 {b99:.2f} ms,"
        f" longest {b_max:.0f} ms"
    )
    seen = NOTED.get("baseline", Noted(0.0, 0.0, 0.0, 0.0))
    print(
        f"  failed transactions: {base.failed}; WAL {seen.wal_mb:.0f} MB,"
        f" a checkpoint running {seen.checkpointing:.0f}% of it"
    )
    for label, (n, _, p99) in base.by_window(windows[1:]).items():  # its checkpoints
        window = next(w for w in windows if w[0] == label)
        print(
            f"  {label.strip()}: {window[2] - window[1]:.1f} s, {n:,} transactions, p99 {p99:.2f} ms,"
            f" longest {_longest(base, window):.0f} ms"
        )
    for name in [n for n in ("ours", "naive") if n in runs]:
        bench, steps = runs[name]
        stats = bench.by_window(steps)
        before = stats.get(BEFORE, (0, 0.0, 0.0))
        if before[0]:
            print(
                f"  against the app alone just before the change, in the same run: p99 {before[2]:.2f} ms"
                f" ({before[2] / b99:.2f}x the baseline's), 'p99 x before' below"
            )
        whole = max(end for _, _, end in steps) - steps[0][1]
        worst = 0.0
        print(f"\n{name}: the change took {whole:.1f} s; pgbench failed transactions: {bench.failed}")
        print(
            f"  {'step':<40} {'seconds':>8} {'tx':>8} {'p50 ms':>9} {'p99 ms':>9} {'p50 x':>7} {'p99 x':>7}"
            f" {'longest ms':>11}{' p99 x before' if before[0] else ''}"
            f"{'  stolen  dirty MB  WAL MB  ckpt' if name == 'ours' else ''}"
        )
        for label, (n, p50, p99) in stats.items():
            seconds = next(end - start for lab, start, end in steps if lab == label)
            if label not in (BEFORE, AFTER) and not label.startswith((AUTOVACUUM, CHECKPOINT)):
                worst = max(worst, p99)
            ratio50, ratio99 = (p50 / b50, p99 / b99) if n else (0.0, 0.0)
            row = f"{n:>8,} {p50:>9.2f} {p99:>9.2f} {ratio50:>7.2f} {ratio99:>7.2f}"
            window = next(w for w in steps if w[0] == label)
            paired = f" {p99 / before[2]:>12.2f}" if before[0] and n else ""
            got = NOTED.get(label)
            steal = (
                f" {got.stolen:>7.1f}% {got.dirty_mb:>9.0f} {got.wal_mb:>7.0f} {got.checkpointing:>4.0f}%"
                if name == "ours" and got is not None
                else ""
            )
            print(f"  {label:<40} {seconds:>8.1f} {row} {_longest(bench, window):>11.0f}{paired}{steal}")
        print(f"  worst step p99: {worst:.1f} ms = {worst / b99:.1f}x the baseline's")


def _longest(bench: PgBench, window: tuple[str, float, float]) -> float:
    """The longest single transaction that finished in the window: the worst stall an app saw."""
    _, start, end = window
    return max((ms for at, ms in bench.finished if start <= at < end), default=0.0)


if __name__ == "__main__":
    sys.exit(main())

"""The WAL a verification writes after a pass, by record type: without and with a read of each batch.

With data checksums on (initdb's default since PostgreSQL 18) or ``wal_log_hints``, the first read
of a row after the transaction that wrote it commits sets its hint bits, and the first such change
to a page after a checkpoint writes the whole page to the WAL (``XLOG/FPI_FOR_HINT``). A pass,
then a checkpoint, then the verification: each variant fills ``w`` on a fresh table of ``--rows``
rows while two app sessions run short UPDATE transactions on it (so the server's horizon moves as
under an app), and the verification's WAL is broken down with ``pg_walinspect``:

  none     500-row keyset batches, nothing else (the engine before 3fa240f)
  read     the same, each batch's range read right after its commit
  ours     zdm-runbook's engine beside the same app (it reads each range in the next batch's round trip)

    python bench/hint_bits.py                  # 600,000 rows, throw-away embedded PostgreSQL 18
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from zdm_runbook import ledger
from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir
from zdm_runbook.execute.backfill import BackfillEngine, BackfillSettings
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

SPEC = 'change: hint-bench\noperations:\n  - backfill: {table: t, set: {w: "v"}}\n'
BATCH = 500


def app(dsn: str, rows: int, stop: threading.Event) -> None:
    """Short transactions on random rows: the app's snapshots trail each batch by milliseconds."""
    rng = random.Random(15)
    with psycopg.connect(dsn, autocommit=True, application_name="app") as conn:
        while not stop.is_set():
            with conn.transaction():
                conn.execute("UPDATE t SET v = v WHERE id = %s", [rng.randint(1, rows)])
                time.sleep(0.003)


def fill(dsn: str, rows: int, variant: str) -> float:
    """Fill ``w`` as ``variant`` does; return the seconds."""
    started = time.monotonic()
    if variant == "ours":
        step = build_plan(parse_change(SPEC)).for_phase(Phase.MIGRATE)[0]
        engine = BackfillEngine(dsn, "hint-bench", step, BackfillSettings())
        engine.run()
        engine.close()
        return time.monotonic() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        for lower in range(1, rows + 1, BATCH):
            bounds = [lower, lower + BATCH - 1]
            conn.execute("UPDATE t SET w = v WHERE id BETWEEN %s AND %s", bounds)
            if variant == "read":
                conn.execute("SELECT count(*) FROM t WHERE id BETWEEN %s AND %s", bounds)
    return time.monotonic() - started


def run(dsn: str, rows: int, variant: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("DROP SCHEMA IF EXISTS zdm CASCADE")
        conn.execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v int, w int, pad text) WITH (autovacuum_enabled = false)"
        )
        conn.execute(
            "INSERT INTO t SELECT g, g %% 1000, NULL, repeat('x', 60) FROM generate_series(1, %s) g", [rows]
        )
        conn.execute("VACUUM ANALYZE t")
        ledger.ensure(conn)
        ledger.record_change(conn, "hint-bench", "", "x")
        conn.execute("CHECKPOINT")
    stop = threading.Event()
    apps = [threading.Thread(target=app, args=(dsn, rows, stop)) for _ in range(2)]
    for thread in apps:
        thread.start()
    try:
        seconds = fill(dsn, rows, variant)
    finally:
        stop.set()
        for thread in apps:
            thread.join()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        bad = conn.execute("SELECT count(*) FROM t WHERE w IS DISTINCT FROM v").fetchone()
        end = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert start and end and bad == (0,)
        kinds: list[tuple[Any, ...]] = conn.execute(
            'SELECT "resource_manager/record_type", combined_size / 1e6 FROM pg_get_wal_stats(%s, %s, true)'
            " WHERE count > 0 ORDER BY combined_size DESC LIMIT 3",
            [start[0], end[0]],
        ).fetchall()
        total = conn.execute("SELECT %s::pg_lsn - %s::pg_lsn", [end[0], start[0]]).fetchone()
    assert total is not None
    what = ", ".join(f"{kind} {float(mb):.1f} MB" for kind, mb in kinds)
    print(
        f"  {variant:<5} pass {seconds:6.1f} s   verification WAL {float(total[0]) / 1e6:7.1f} MB  ({what})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=600_000, help="rows in the table (600,000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three variants (2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zdm-bench-") as folder:
        server = LocalServer(data_dir=Path(folder) / "pg", bin_dir=embedded_bin_dir())
        server.start()
        try:
            dsn = server.dsn("postgres")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_walinspect")
                checksums = conn.execute("SHOW data_checksums").fetchone()
            print(
                f"{server.version()}, {args.rows:,} rows, data checksums {checksums[0] if checksums else '?'}"
            )
            for _ in range(args.rounds):
                for variant in ("none", "read", "ours"):
                    run(dsn, args.rows, variant)
        finally:
            server.destroy()


if __name__ == "__main__":
    main()

"""An index build starts as many parallel workers as ``index_build_workers`` allows (none by
default), seen by sampling the server's own ``pg_stat_activity`` for parallel workers while the
step's ``CREATE INDEX CONCURRENTLY`` runs. The table asks for two workers (its
``parallel_workers`` storage parameter), so only the setting stands between the build and them."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg import sql

from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import scalar

SPEC = """
change: big-total-index
operations:
  - create_index: {table: big, name: big_total_idx, columns: [total]}
"""


class WorkerWatch:
    """Counts the samples, taken every millisecond, that saw a parallel worker of this database."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.seen, self.samples = dsn, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="zdm_runbook-test") as conn:
            while not self.stop.wait(0.001):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker'"
                    " AND datname = current_database()"
                ).fetchone()
                self.samples += 1
                self.seen += bool(row and row[0])

    def __enter__(self) -> WorkerWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.parametrize("workers", [None, 2], ids=["default", "two"])
def test_an_index_build_starts_the_parallel_workers_it_is_allowed(
    any_pg_db: str, workers: int | None
) -> None:
    dsn = any_pg_db
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, total numeric NOT NULL) WITH (parallel_workers = 2)"
        )
        c.execute("INSERT INTO big SELECT g, (g::bigint * 7919) % 100003 FROM generate_series(1, 600000) g")
        c.execute("VACUUM ANALYZE big")
        name = c.execute("SELECT current_database()").fetchone() or ("",)
        room = sql.SQL("ALTER DATABASE {} SET maintenance_work_mem = '256MB'")  # 32 MB for each of 3
        c.execute(room.format(sql.Identifier(name[0])))
    settings = {} if workers is None else {"index_build_workers": workers}
    with WorkerWatch(dsn) as watch:
        execute_phase(build_plan(parse_change(SPEC)), Phase.EXPAND, dsn, settings=settings)
    assert scalar(dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_total_idx'::regclass")
    assert watch.samples > 20, "the build was too short to be watched"
    if workers is None:
        assert watch.seen == 0, (
            f"the build started parallel workers ({watch.seen} of {watch.samples} samples)"
        )
    else:
        assert watch.seen > 0, f"no parallel worker in {watch.samples} samples: the watch sees nothing"
    recorded = scalar(
        dsn,
        "SELECT settings->>'max_parallel_maintenance_workers' FROM zdm.step_attempts"
        " WHERE step_key LIKE '%%create_index%%'",
    )
    assert recorded == str(workers or 0)

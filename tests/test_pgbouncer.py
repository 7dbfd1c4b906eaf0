"""Through Debian's PgBouncer: a transaction-pooled connection is refused before anything runs (its
session lock and prepared statements would not be the run's own); a session-pooled one works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from zdm_runbook.core.errors import ConfigError
from zdm_runbook.core.pooling import refuse_transaction_pooling
from zdm_runbook.execute.phase import execute_phase
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.change import parse_change

from .helpers import ORDERS, columns, scalar, zdm
from .pgbouncer import pgbouncer

SPEC = """
change: orders-note
operations:
  - add_column: {table: orders, column: remark, type: text}
  - backfill: {table: orders, set: {remark: "'r' || id"}}
"""


@pytest.fixture
def pooled(db: str) -> Iterator[dict[str, str]]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(ORDERS)
    with pgbouncer(db) as dsns:
        yield dsns


def _no_ledger(db: str) -> bool:
    return scalar(db, "SELECT to_regnamespace('zdm') IS NULL") is True


def test_transaction_pooling_is_refused_before_anything_runs(db: str, pooled: dict[str, str]) -> None:
    with pytest.raises(
        ConfigError, match="transaction-pooling proxy: two connections ran on one server backend"
    ):
        refuse_transaction_pooling(pooled["transaction"])
    with pytest.raises(ConfigError, match="pool in session mode"):
        execute_phase(build_plan(parse_change(SPEC)), "expand", pooled["transaction"])
    assert _no_ledger(db) and "remark" not in columns(db, "orders")


def test_zdm_run_through_transaction_pooling_exits_2_with_nothing_written(
    db: str, pooled: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    result = zdm(
        "run",
        "expand",
        str(spec),
        "--archive",
        str(tmp_path / "archive"),
        env={"ZDM_DSN": pooled["transaction"]},
    )
    assert result.returncode == 2, result.stderr
    assert "transaction-pooling proxy" in result.stderr and "Connect to PostgreSQL directly" in result.stderr
    assert _no_ledger(db) and "remark" not in columns(db, "orders")
    assert not (tmp_path / "archive").exists()


def test_session_pooling_runs_every_phase_one_after_another(db: str, pooled: dict[str, str]) -> None:
    plan = build_plan(parse_change(SPEC))
    refuse_transaction_pooling(pooled["session"])  # a session pool is not refused
    for phase in ("expand", "migrate", "switch", "contract"):
        results = execute_phase(plan, phase, pooled["session"], on_batch=lambda state: None)
        assert all(r.outcome in ("applied", "skipped") for r in results), (phase, results)
    assert scalar(db, "SELECT count(*) FROM orders WHERE remark IS NULL") == 0
    runs = scalar(db, "SELECT string_agg(outcome, ',' ORDER BY started_at) FROM zdm.phase_runs")
    assert runs == "succeeded,succeeded,succeeded,succeeded"

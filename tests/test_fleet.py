"""One change across a fleet of databases, scheduled by real Apache Airflow (``zdm_runbook.fleet``).

Airflow 3 with its metadata on SQLite runs the example DAG (``examples/airflow/zdm_fleet.py``) with
``airflow dags test``, against real databases on the test server, each an Airflow connection. The
first tests check the rules without a scheduler: connections, failures, the wave's verdict, the
DAG's settings.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.airflow_fleet import (
    APPROVER,
    EXAMPLE,
    PASSWORD,
    REPO,
    Airflow,
    airflow_home,
    connection,
    files_containing,
    require_airflow,
)
from tests.conftest import server_dsn
from zdm_runbook.core.connect import redact
from zdm_runbook.core.errors import ConfigError, ExitCode
from zdm_runbook.fleet.settings import from_environ
from zdm_runbook.fleet.targets import check_conn_id, conninfo_of
from zdm_runbook.fleet.waves import Next, WaveVerdict, check_fraction, next_step

SPEC = """
change: fleet-accounts
description: accounts get a tier, and unique emails
operations:
  - add_column: {table: accounts, column: tier, type: text}
  - create_index: {table: accounts, name: accounts_email_key, columns: [email], unique: true}
  - backfill: {table: accounts, set: {tier: "'basic'"}}
"""
CHANGE = "fleet-accounts"


# -- the rules, without a scheduler ------------------------------------------------------------


def test_a_connection_becomes_a_dsn_whose_password_never_shows() -> None:
    fields = {
        "conn_type": "postgres",
        "host": "db1.internal",
        "port": 6432,
        "login": "zdm",
        "password": "pw-in-airflow-9Q",
        "schema": "tenant_1",
        "extra": {"sslmode": "require", "cursor": "realdictcursor", "iam": False},
    }
    dsn = conninfo_of("tenant_1", fields)
    assert psycopg.conninfo.conninfo_to_dict(dsn) == {
        "host": "db1.internal",
        "port": "6432",
        "user": "zdm",
        "password": "pw-in-airflow-9Q",
        "dbname": "tenant_1",
        "sslmode": "require",  # libpq's extras are kept, the provider's (cursor, iam) are not
    }
    assert "pw-in-airflow-9Q" not in redact(f"could not connect with {dsn}")  # remembered as a secret
    with pytest.raises(ConfigError, match=r"target tenant_2: conn_type is 'mysql', not 'postgres'"):
        conninfo_of("tenant_2", {**fields, "conn_type": "mysql"})
    with pytest.raises(ConfigError, match=r"target tenant_3: extra is not a JSON object"):
        conninfo_of("tenant_3", {**fields, "extra": ["sslmode"]})
    for bad_id in ("../etc", "a b", "", ".."):
        with pytest.raises(ConfigError, match="an Airflow connection id of letters"):
            check_conn_id(bad_id)


def test_what_a_failure_means_for_the_target() -> None:
    assert next_step(ExitCode.OK, None) == Next.ON
    assert next_step(ExitCode.FAILED, "55P03") == Next.RETRY  # lock_not_available
    assert next_step(ExitCode.FAILED, "57014") == Next.RETRY  # a statement cancelled by its timeout
    assert next_step(ExitCode.FAILED, "40P01") == Next.RETRY  # a deadlock
    assert next_step(ExitCode.FAILED, "08006") == Next.RETRY  # a lost connection
    assert next_step(ExitCode.FAILED, None) == Next.RETRY  # no statement failed: the kernel died
    assert next_step(ExitCode.REFUSED, None) == Next.RETRY  # a no-go preflight
    assert next_step(ExitCode.FAILED, "23505") == Next.STOP  # duplicate values under a unique index
    assert next_step(ExitCode.FAILED, "42703") == Next.STOP
    assert next_step(ExitCode.BAD_INPUT, None) == Next.STOP
    wave = WaveVerdict("expand", ("a", "b"), {"c": "1 of 2 steps are done"}, max_failed=0.1)
    assert not wave.goes_on and "THE WAVE STOPS" in str(wave) and "c: stopped: 1 of 2" in str(wave)
    assert WaveVerdict("expand", ("a", "b"), {"c": "x"}, max_failed=0.5).goes_on
    assert not WaveVerdict("expand", (), {}, max_failed=0.5).goes_on  # nothing completed
    with pytest.raises(ValueError, match="max_failed_fraction must be a fraction"):
        check_fraction(1.5)


def test_the_dags_settings_come_from_the_environment_every_problem_at_once(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    settings = from_environ(
        {
            "ZDM_FLEET_SPEC": str(spec),
            "ZDM_FLEET_TARGETS": "tenant_a, tenant_b",
            "ZDM_FLEET_PHASES": "expand,migrate",
            "ZDM_FLEET_SIGNOFF_BY": "nightly-robot",
            "ZDM_FLEET_PARAM_LOCK_TIMEOUT": "2s",
            "ZDM_FLEET_RETRY_DELAY": "90s",
        }
    )
    assert settings["targets"] == ["tenant_a", "tenant_b"]
    assert settings["parameters"] == {"signoff_by": "nightly-robot", "lock_timeout": "2s"}
    assert settings["retry_delay"].total_seconds() == 90 and settings["approval"] == "ledger"
    with pytest.raises(ConfigError) as bad:
        from_environ(
            {"ZDM_FLEET_MAX_FAILED": "ten percent", "ZDM_FLEET_RETRY_DELAY": "soon", "ZDM_FLEET_TARGTES": "a"}
        )
    text = str(bad.value)
    for expected in (
        "ZDM_FLEET_SPEC is not set",
        "ZDM_FLEET_TARGETS is not set",
        "ZDM_FLEET_MAX_FAILED='ten percent': not a float",
        "ZDM_FLEET_RETRY_DELAY='soon': expected a duration",
        "ZDM_FLEET_TARGTES: not a setting of the fleet DAG",
    ):
        assert expected in text, text


# -- real Airflow, real databases --------------------------------------------------------------


@pytest.fixture
def airflow(tmp_path: Path) -> Iterator[Airflow]:
    """A fresh Airflow home per test (one metadata database per wave, as one scheduler has)."""
    require_airflow()
    with airflow_home(tmp_path) as home:
        yield home


FleetDb = Callable[..., str]


@pytest.fixture
def fleet_db(request: pytest.FixtureRequest) -> Iterator[FleetDb]:
    """Makes databases with an ``accounts`` table (5,000 rows; ``duplicates`` adds a repeated email)."""
    admin = server_dsn(request.config, "primary")
    made: list[str] = []

    def make(duplicates: bool = False) -> str:
        name = f"zdm_fleet_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        with psycopg.connect(make_conninfo(admin, dbname=name), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL)"
            )
            conn.execute(
                "INSERT INTO accounts (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 5000) g"
            )
            if duplicates:
                conn.execute("INSERT INTO accounts (email) VALUES ('user7@example.com')")
        return name

    yield make
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _fleet(
    request: pytest.FixtureRequest, tmp_path: Path, targets: dict[str, str], **settings: str
) -> dict[str, str]:
    """The environment of a wave: the spec, the targets as Airflow connections, the settings."""
    admin = server_dsn(request.config, "primary")
    spec = tmp_path / "fleet-accounts.yaml"
    spec.write_text(SPEC)
    env = {f"AIRFLOW_CONN_{conn_id.upper()}": connection(admin, db) for conn_id, db in targets.items()}
    env.update(
        ZDM_FLEET_SPEC=str(spec),
        ZDM_FLEET_TARGETS=",".join(targets),
        ZDM_FLEET_PHASES="expand,migrate",
        ZDM_FLEET_ARCHIVE=str(tmp_path / "archive"),
        ZDM_FLEET_RETRY_DELAY="1s",
        ZDM_FLEET_GATE_POLL="1s",
        ZDM_FLEET_PARAM_MAX_ATTEMPTS="2",
    )
    env.update({f"ZDM_FLEET_{k.upper()}": v for k, v in settings.items()})
    return env


def _db(request: pytest.FixtureRequest, name: str) -> str:
    return make_conninfo(server_dsn(request.config, "primary"), dbname=name)


def _one(dsn: str, query: str, params: list[object] | None = None) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def _archives(tmp_path: Path, target: str, phase: str, suffix: str = "ipynb") -> list[Path]:
    return sorted((tmp_path / "archive" / target / CHANGE).glob(f"{phase}-*.{suffix}"))


def _no_secrets(
    airflow: Airflow, tmp_path: Path, output: str, targets: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """No password and no DSN in what Airflow printed or stored, nor in any archived file."""
    admin = server_dsn(request.config, "primary")
    password = psycopg.conninfo.conninfo_to_dict(admin).get("password") or PASSWORD
    needles = [str(password), "password="]
    assert not [n for n in needles if n in output], "a password reached the task log"
    assert files_containing(airflow.home, needles) == []  # logs, XCom, rendered fields, triggers, HITL
    assert files_containing(tmp_path / "archive", needles) == []
    with psycopg.connect(_db(request, next(iter(targets.values())))) as conn:  # nor the ledger
        row = conn.execute("SELECT string_agg(parameters::text, ' ') FROM zdm.phase_runs").fetchone()
    assert row and str(password) not in str(row[0]) and "ZDM_FLEET_DSN" in str(row[0])


def test_a_wave_with_airflow_approvals_a_held_lock_and_duplicates(
    airflow: Airflow, fleet_db: FleetDb, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    targets = {
        "tenant_ok": fleet_db(),
        "tenant_locked": fleet_db(),
        "tenant_dupes": fleet_db(duplicates=True),
    }
    env = _fleet(request, tmp_path, targets, approval="airflow", max_failed="0.5", retries="2")
    # Another session holds a lock on tenant_locked's table, idle in its transaction, until the first
    # expand there has been archived: that try fails, Airflow retries, the retry succeeds.
    holder = psycopg.connect(_db(request, targets["tenant_locked"]))
    holder.execute("LOCK TABLE accounts IN ACCESS SHARE MODE")
    holder_pid = holder.info.backend_pid
    released = threading.Event()

    def release_after_first_try(_: Path) -> bool:
        if _archives(tmp_path, "tenant_locked", "expand", "html"):
            holder.rollback()
            released.set()
            return True
        return False

    try:
        run = airflow.run_dag(env, approve=2, during=release_after_first_try)
    finally:
        holder.close()
    assert released.is_set()
    assert run.returncode == 0 and run.state == "success", run.output[-5000:]
    tasks = run.tasks
    assert tasks[("expand", "tenant_ok")] == ("success", 1)
    assert tasks[("expand", "tenant_locked")] == ("success", 2)  # retried once, then succeeded
    assert tasks[("expand", "tenant_dupes")] == ("failed", 1)  # 23505: not retried, the target stops
    assert tasks[("migrate", "tenant_ok")] == ("success", 1)
    assert tasks[("migrate", "tenant_locked")] == ("success", 1)
    assert tasks[("migrate", "tenant_dupes")][0] == "skipped"
    for task in (
        "wave_expand",
        "approve_expand",
        "signoff_expand",
        "wave_migrate",
        "approve_migrate",
        "signoff_migrate",
    ):
        assert tasks[(task, "")][0] == "success", task
    assert "fleet_c" not in run.output
    assert "tenant_dupes: stopped: 1 of 2 steps are done (failed: 02-create_index-create)" in run.output

    # Each target's own ledger and archive.
    for target in ("tenant_ok", "tenant_locked"):
        dsn = _db(request, targets[target])
        signed = (
            psycopg.connect(dsn, autocommit=True)
            .execute("SELECT phase, by_name, evidence FROM zdm.signoffs ORDER BY signoff_id")
            .fetchall()
        )
        assert [(p, b) for p, b, _ in signed] == [("expand", APPROVER), ("migrate", APPROVER)]
        assert all(
            e["airflow_run_id"] == run.run_id and e["airflow_dag_id"] == "zdm_fleet" for _, _, e in signed
        )
        assert _one(dsn, "SELECT count(*) FROM accounts WHERE tier = 'basic'") == 5000
        assert (
            _one(dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email_key'::regclass")
            is True
        )
        assert len(_archives(tmp_path, target, "migrate")) == 1
        assert len(_archives(tmp_path, target, "migrate", "html")) == 1
    assert len(_archives(tmp_path, "tenant_ok", "expand")) == 1
    first, second = _archives(tmp_path, "tenant_locked", "expand")
    # The failed try's archive names the holder: its DDL timed out blocked by it, or, when Airflow was
    # slow to start (a loaded machine) and the holder's transaction had passed 30 s, the preflight
    # said no-go because of it. Both are retried; both are right.
    failed_try = first.read_text()
    timed_out = f"blocked by pid {holder_pid}" in failed_try and "[SQLSTATE 55P03]" in failed_try
    no_go = "NO-GO: preflight on accounts" in failed_try and f"pid {holder_pid} " in failed_try
    assert timed_out or no_go
    assert f"expand of {CHANGE} succeeded" in second.read_text()
    dupes = _db(request, targets["tenant_dupes"])
    assert _one(dupes, "SELECT count(*) FROM zdm.signoffs") == 0
    assert _one(dupes, "SELECT count(*) FROM zdm.phase_runs WHERE phase = 'migrate'") == 0
    assert (
        _one(
            dupes,
            "SELECT sqlstate FROM zdm.step_attempts WHERE outcome <> 'applied' ORDER BY attempt_id DESC LIMIT 1",
        )
        == "23505"
    )
    assert len(_archives(tmp_path, "tenant_dupes", "expand")) == 1 and not _archives(
        tmp_path, "tenant_dupes", "migrate"
    )
    assert (
        "Key (email)=(user7@example.com) is duplicated"
        in _archives(tmp_path, "tenant_dupes", "expand")[0].read_text()
    )

    # The approval form says where each target stands; the approver is recorded by name.
    with closing(sqlite3.connect(airflow.db)) as meta:
        forms = meta.execute(
            "SELECT subject, body, responded_by FROM hitl_detail ORDER BY subject"
        ).fetchall()
    assert [f[0] for f in forms] == [f"Sign off {p} of {CHANGE} on the fleet" for p in ("expand", "migrate")]
    assert "- `tenant_dupes`: **stopped**: 1 of 2 steps are done" in forms[0][1]
    assert "- `tenant_ok`: complete" in forms[1][1] and APPROVER in forms[1][2]

    # XComs say where each run is archived, and nothing of a DSN.
    assert any("tenant_ok" in x and "expand-" in x for x in run.xcoms)
    _no_secrets(airflow, tmp_path, run.output, targets, request)


def test_a_phase_waits_deferred_for_its_sign_off_in_the_ledger(
    airflow: Airflow, fleet_db: FleetDb, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    targets = {"tenant_solo": fleet_db()}
    env = _fleet(request, tmp_path, targets, approval="ledger")
    dsn = _db(request, targets["tenant_solo"])
    signed = threading.Event()

    def sign_off_once_waiting(output: Path) -> bool:
        # migrate has deferred on its gate (its trigger polls the ledger): sign expand off the way a
        # DBA does, with zdm signoff, from outside Airflow.
        if "deferred (ledger read every" not in output.read_text():
            return False
        done = subprocess.run(
            [sys.executable, "-m", "zdm_runbook", "signoff", CHANGE, "expand", "--by", "dba_bob"],
            env={"ZDM_DSN": dsn, "PATH": "/usr/bin:/bin"},
            check=False,
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        signed.set()
        return True

    run = airflow.run_dag(env, during=sign_off_once_waiting)
    assert signed.is_set()
    assert run.returncode == 0 and run.state == "success", run.output[-5000:]
    assert run.tasks[("migrate", "tenant_solo")] == ("success", 1)
    assert "[DAG TEST] running trigger in line" in run.output
    assert "tenant_solo: waiting" in run.output and "expand is not signed off" in run.output
    # migrate began only after the sign-off, by the server's clock.
    assert (
        _one(
            dsn,
            "SELECT (SELECT started_at FROM zdm.phase_runs WHERE phase = 'migrate')"
            " > (SELECT signed_at FROM zdm.signoffs WHERE phase = 'expand' AND by_name = 'dba_bob')",
        )
        is True
    )
    _no_secrets(airflow, tmp_path, run.output, targets, request)


def test_the_wave_stops_when_too_many_targets_fail(
    airflow: Airflow, fleet_db: FleetDb, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    targets = {"tenant_fine": fleet_db(), "tenant_bad": fleet_db(duplicates=True)}
    env = _fleet(request, tmp_path, targets, signoff_by="nightly-robot")  # default max_failed: 10%
    run = airflow.run_dag(env)
    assert run.state == "failed", run.output[-5000:]
    assert run.tasks[("expand", "tenant_fine")][0] == "success"
    assert run.tasks[("expand", "tenant_bad")] == ("failed", 1)
    assert run.tasks[("wave_expand", "")][0] == "failed"
    assert run.tasks[("migrate", "")][0] == "upstream_failed"  # never expanded over the targets
    assert "1 stopped (50%; the wave stops above 10%)" in run.output and "THE WAVE STOPS" in run.output
    fine = _db(request, targets["tenant_fine"])
    assert _one(fine, "SELECT by_name FROM zdm.signoffs WHERE phase = 'expand'") == "nightly-robot"
    assert _one(fine, "SELECT count(*) FROM zdm.phase_runs WHERE phase = 'migrate'") == 0


def test_a_rejected_approval_stops_the_wave_and_signs_nothing(
    airflow: Airflow, fleet_db: FleetDb, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    targets = {"tenant_one": fleet_db()}
    run = airflow.run_dag(_fleet(request, tmp_path, targets, approval="airflow"), approve=1, choice="Reject")
    assert run.state == "failed", run.output[-5000:]
    assert run.tasks[("expand", "tenant_one")][0] == "success"
    assert run.tasks[("signoff_expand", "")][0] == "skipped"
    assert run.tasks[("migrate", "")][0] == "skipped"
    dsn = _db(request, targets["tenant_one"])
    assert _one(dsn, "SELECT count(*) FROM zdm.signoffs") == 0
    assert _one(dsn, "SELECT count(*) FROM zdm.phase_runs WHERE phase = 'migrate'") == 0


_IMPORT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
dag = bag.dags.get("zdm_fleet")
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "tasks": sorted(dag.task_ids) if dag else []}))
"""


def test_the_example_dag_imports_and_names_what_is_wrong(airflow: Airflow, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)

    def load(settings: dict[str, str]) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-c", _IMPORT, str(EXAMPLE)],
            env={**airflow.env, **settings},
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    good = load({"ZDM_FLEET_SPEC": str(spec), "ZDM_FLEET_TARGETS": "a,b,c", "ZDM_FLEET_APPROVAL": "airflow"})
    assert good["errors"] == {}
    assert good["tasks"] == sorted(
        f"{kind}{p}"
        for p in ("expand", "migrate", "switch", "contract")
        for kind in ("", "wave_", "approve_", "signoff_")
    )
    bad = load(
        {
            "ZDM_FLEET_SPEC": str(spec),
            "ZDM_FLEET_TARGETS": "a,a",
            "ZDM_FLEET_PARAM_LOCK_TIMEOUT": "soon",
        }
    )
    (error,) = bad["errors"].values()  # type: ignore[attr-defined]
    assert "targets: a given twice" in error
    bad = load(
        {"ZDM_FLEET_SPEC": str(spec), "ZDM_FLEET_TARGETS": "a", "ZDM_FLEET_PARAM_LOCK_TIMEOUT": "soon"}
    )
    (error,) = bad["errors"].values()  # type: ignore[attr-defined]
    assert re.search(r"lock_timeout.*soon", error), error
    bad = load({"ZDM_FLEET_TARGETS": "a", "ZDM_FLEET_PARAM_DSN_ENV": "OTHER"})
    (error,) = bad["errors"].values()  # type: ignore[attr-defined]
    assert "ZDM_FLEET_SPEC is not set" in error

"""Real Apache Airflow for the fleet tests: its own home with metadata on SQLite, the example DAG,
targets defined as Airflow connections (environment variables, Airflow's own secret store), and
``airflow dags test`` run as a separate process, as a user would run it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "airflow"
AIRFLOW = Path(sys.executable).parent / "airflow"
APPROVER = "dba_alice"
# A password the targets' connections carry; the tests look for it everywhere Airflow and zdm write.
_migrated: Path | None = None  # the first home's migrated metadata database
PASSWORD = "Fl33t-S3cret-7c1e"  # noqa: S105 - a test password, looked for in every output


def require_airflow() -> None:
    """Airflow, or a skip naming it (a failure in CI, where .ci/run installs the extra)."""
    if importlib.util.find_spec("airflow") is not None and AIRFLOW.exists():
        return
    if os.environ.get("CI"):
        pytest.fail("Apache Airflow is not installed, and .ci/run installs it (pip install -e '.[airflow]')")
    pytest.skip("needs Apache Airflow: pip install -e '.[airflow]' (.ci/run installs it)")


def connection(admin_dsn: str, dbname: str) -> str:
    """An Airflow connection (its JSON form, as ``AIRFLOW_CONN_<ID>`` takes it) to ``dbname``."""
    info = conninfo_to_dict(admin_dsn)
    fields: dict[str, Any] = {
        "conn_type": "postgres",
        "host": info.get("host", "localhost"),
        "port": int(info.get("port") or 5432),
        "login": info.get("user", ""),
        # The embedded server trusts its private socket, so any password is accepted; a server
        # given by ZDM_TEST_DSN gets its own. Either way it must not show up anywhere.
        "password": info.get("password") or PASSWORD,
        "schema": dbname,
        "extra": {"connect_timeout": "10", "cursor": "dictcursor"},  # libpq's, and the provider's
    }
    return json.dumps(fields)


@dataclass
class DagRun:
    """What one ``airflow dags test`` printed, and what its metadata says."""

    returncode: int
    output: str
    run_id: str
    state: str
    tasks: dict[tuple[str, str], tuple[str, int]]  # (task_id, target or "") -> (state, try_number)
    xcoms: list[str]


@dataclass
class Airflow:
    """An Airflow home with its metadata database migrated."""

    home: Path
    env: dict[str, str]

    @property
    def db(self) -> Path:
        return self.home / "airflow.db"

    def run_dag(
        self,
        settings: Mapping[str, str],
        *,
        approve: int = 0,
        choice: str = "Approve",
        during: Any = None,
        timeout_s: float = 400,
    ) -> DagRun:
        """``airflow dags test zdm_fleet`` with these ``ZDM_FLEET_*`` settings (and connections).

        ``approve``: how many approvals a second process gives through Airflow's REST API as
        :data:`APPROVER`, answering ``choice``. ``during(output_path)``: called in a loop while the DAG runs (return True
        when done with it)."""
        env = {**self.env, **settings}
        out_path = self.home / f"run-{time.monotonic_ns()}.log"
        approver = None
        with out_path.open("w") as out:
            if approve:
                approver = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.fleet_approver",
                        "zdm_fleet",
                        APPROVER,
                        str(approve),
                        choice,
                    ],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            proc = subprocess.Popen(
                [str(AIRFLOW), "dags", "test", "zdm_fleet"], env=env, cwd=self.home, stdout=out, stderr=out
            )
            deadline = time.monotonic() + timeout_s
            done = during is None
            while proc.poll() is None and time.monotonic() < deadline:
                if not done:
                    done = bool(during(out_path))
                time.sleep(0.2)
            if proc.poll() is None:
                proc.kill()
                pytest.fail(
                    f"airflow dags test did not end in {timeout_s} s:\n{out_path.read_text()[-4000:]}"
                )
        output = out_path.read_text()
        if approver is not None:
            said, _ = approver.communicate(timeout=60)
            assert approver.returncode == 0, (
                f"the approver did not answer {approve} approvals:\n{said[-3000:]}"
            )
            output += said
        return self._read(proc.returncode, output)

    def _read(self, returncode: int, output: str) -> DagRun:
        with closing(sqlite3.connect(self.db)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            run_id, state = db.execute(
                "SELECT run_id, state FROM dag_run WHERE dag_id = 'zdm_fleet' ORDER BY id DESC LIMIT 1"
            ).fetchone()
            rows = db.execute(
                "SELECT task_id, coalesce(rendered_map_index, ''), state, try_number FROM task_instance"
                " WHERE dag_id = 'zdm_fleet' AND run_id = ?",
                [run_id],
            ).fetchall()
            xcoms = [str(v) for (v,) in db.execute("SELECT value FROM xcom WHERE run_id = ?", [run_id])]
        tasks = {(t, m): (s, n) for t, m, s, n in rows}
        return DagRun(returncode, output, run_id, state, tasks, xcoms)


@contextmanager
def airflow_home(root: Path) -> Iterator[Airflow]:
    """A fresh Airflow home under ``root``: SQLite metadata, the example DAG, one named user."""
    home = root / "airflow-home"
    home.mkdir(parents=True)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ZDM_FLEET_")) and k != "ZDM_DSN"
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(EXAMPLE),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{APPROVER}:admin",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
        PYTHONPATH=str(REPO),
    )
    if _migrated is None:  # once per session; each home gets a copy of the migrated metadata
        done = subprocess.run(
            [str(AIRFLOW), "db", "migrate"], check=False, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        pristine = Path(tempfile.mkdtemp(prefix="zdm-airflow-")) / "airflow.db"
        shutil.copyfile(home / "airflow.db", pristine)  # before any run writes to it
        globals()["_migrated"] = pristine
    else:
        shutil.copyfile(_migrated, home / "airflow.db")
    yield Airflow(home, env)


def files_containing(root: Path, needles: list[str]) -> list[str]:
    """Every file under ``root`` whose bytes contain one of ``needles`` (binary files included)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n!r}" for n in needles if n.encode() in data]
    return found

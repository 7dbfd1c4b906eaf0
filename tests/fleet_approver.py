"""Approve a fleet's human-in-the-loop tasks through Airflow's own REST API, as a named user.

Run as a separate process (Airflow's settings are read once per process, from the environment the
test gives it): ``python -m tests.fleet_approver DAG_ID USER COUNT [Approve|Reject]``. It answers
the first COUNT approvals of the DAG's runs as they appear, then prints what it did and exits. The
API application is Airflow's own (``create_app``), served in-process by FastAPI's test client; the
user is one of the simple auth manager's, given a token the way Airflow's login would.
"""

from __future__ import annotations

import sys
import time

from airflow.api_fastapi.app import create_app, get_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from fastapi.testclient import TestClient


def main(dag_id: str, user: str, count: int, choice: str = "Approve", timeout_s: float = 600) -> int:
    client = TestClient(create_app())
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=user, role="admin"))
    client.headers["Authorization"] = f"Bearer {token}"
    answered: set[tuple[str, str, int]] = set()
    deadline = time.monotonic() + timeout_s
    while len(answered) < count and time.monotonic() < deadline:
        got = client.get(f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails", params={"response_received": False})
        got.raise_for_status()
        for item in got.json()["hitl_details"]:
            ti = item["task_instance"]
            key = (ti["dag_run_id"], ti["task_id"], ti["map_index"])
            if key in answered or item["response_received"]:
                continue
            url = (
                f"/api/v2/dags/{dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}"
                f"/{ti['map_index']}/hitlDetails"
            )
            put = client.patch(url, json={"chosen_options": [choice], "params_input": {}})
            put.raise_for_status()
            answered.add(key)
            print(f"answered {ti['task_id']} with {choice} as {user}", flush=True)
        time.sleep(0.5)
    return 0 if len(answered) == count else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[0], args[1], int(args[2]), *args[3:]))

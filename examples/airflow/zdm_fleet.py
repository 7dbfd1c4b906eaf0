"""zdm_fleet: one zdm-runbook change across a fleet of PostgreSQL databases.

Copy this file into your DAGs folder (or point ``dags_folder`` here) and set, for the scheduler,
the DAG processor and the workers:

    ZDM_FLEET_SPEC=/srv/changes/orders-customer-ref.yaml   # the change's spec
    ZDM_FLEET_TARGETS=tenant_eu1,tenant_eu2,tenant_us1      # Airflow connection ids (postgres)
    ZDM_FLEET_PHASES=expand,migrate                         # default: all four
    ZDM_FLEET_ARCHIVE=/srv/zdm-archive                      # ARCHIVE/<target>/<change>/<phase>-<UTC>
    ZDM_FLEET_APPROVAL=airflow                              # an approval per phase in Airflow
    ZDM_FLEET_SIGNOFF_BY=...                                # or: unattended, each run signs itself off

More settings (ZDM_FLEET_MAX_FAILED, _MAX_ACTIVE, _POOL, _RETRIES, _RETRY_DELAY, _GATE_POLL and
ZDM_FLEET_PARAM_<NAME> for any notebook parameter) are described in zdm_runbook.fleet.settings.
Try it with ``airflow dags test zdm_fleet``.
"""

from __future__ import annotations

import os

from zdm_runbook.fleet.dag import fleet_dag_from_env

dag = fleet_dag_from_env(os.environ, dag_id="zdm_fleet")

"""The deferred wait on a target's gate: a trigger polling that target's ledger.

A phase whose gate is closed only by time (contract's deploy cycle) or a missing sign-off hands its
wait to Airflow's triggerer instead of holding a worker slot for hours. The trigger's arguments,
which Airflow stores in its metadata database, name the connection, never the DSN: the triggerer
resolves it from Airflow's own secret store at each start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from airflow.sdk import BaseHook, Connection
from airflow.triggers.base import BaseTrigger, TriggerEvent

from zdm_runbook.core.connect import redact
from zdm_runbook.core.errors import ZdmError
from zdm_runbook.fleet.targets import conninfo_of, read_gate

CLASSPATH = "zdm_runbook.fleet.trigger.GateTrigger"


def connection_fields(conn: Connection) -> dict[str, Any]:
    """The fields of an Airflow connection that :func:`conninfo_of` reads."""
    return {
        "conn_type": conn.conn_type,
        "host": conn.host,
        "port": conn.port,
        "login": conn.login,
        "password": conn.password,
        "schema": conn.schema,
        "extra": conn.extra_dejson,
    }


class GateTrigger(BaseTrigger):
    """Fires once the gate of ``phase`` in ``conn_id``'s ledger opens, or closes for a reason no
    wait cures (then the task stops the target). A database that cannot be reached is polled again."""

    def __init__(
        self,
        conn_id: str,
        change_id: str,
        phase: str,
        deploy_cycle_s: float,
        deploy_cycle_override: str | None = None,
        poll_s: float = 60.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.conn_id = conn_id
        self.change_id = change_id
        self.phase = phase
        self.deploy_cycle_s = deploy_cycle_s
        self.deploy_cycle_override = deploy_cycle_override
        self.poll_s = poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {
            "conn_id": self.conn_id,
            "change_id": self.change_id,
            "phase": self.phase,
            "deploy_cycle_s": self.deploy_cycle_s,
            "deploy_cycle_override": self.deploy_cycle_override,
            "poll_s": self.poll_s,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        conn = await BaseHook.aget_connection(self.conn_id)
        dsn = conninfo_of(self.conn_id, connection_fields(conn))
        said = ""
        while True:
            try:
                gate = await asyncio.to_thread(
                    read_gate,
                    dsn,
                    self.change_id,
                    self.phase,
                    deploy_cycle_s=self.deploy_cycle_s,
                    deploy_cycle_override=self.deploy_cycle_override,
                )
            except (psycopg.Error, ZdmError) as exc:
                why = redact(str(exc))
                self.log.warning("%s: the ledger could not be read, polling again: %s", self.conn_id, why)
            else:
                if gate.ok or not gate.waiting:
                    yield TriggerEvent(gate.to_dict())  # type: ignore[no-untyped-call]
                    return
                if str(gate) != said:
                    said = str(gate)
                    self.log.info("%s: waiting\n%s", self.conn_id, said)
            await asyncio.sleep(self.poll_s)

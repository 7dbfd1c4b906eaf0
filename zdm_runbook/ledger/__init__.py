"""Record: schema ``zdm`` in the target database, and the only code that runs SQL on it (schema and
versions, changes, phase runs, step attempts, backfill checkpoints, sign-offs, gates, status).

May import ``zdm_runbook.core`` and the model (``spec``); the running layers and the faces write
the record only through the functions here.
"""

from zdm_runbook.ledger.checkpoints import backfills, control_backfill
from zdm_runbook.ledger.runs import (
    applied_steps,
    attach_notebook,
    attempts,
    close_abandoned_runs,
    failed_sqlstate,
    finish_attempt,
    finish_phase_run,
    lock_change,
    phase_run_recorded,
    record_change,
    record_notebook,
    start_attempt,
    start_phase_run,
    unlock_change,
)
from zdm_runbook.ledger.schema import LOCK_CLASS, OUTCOMES, SCHEMA, VERSIONS, Conn, ensure

__all__ = [
    "LOCK_CLASS",
    "OUTCOMES",
    "SCHEMA",
    "VERSIONS",
    "Conn",
    "applied_steps",
    "attach_notebook",
    "attempts",
    "backfills",
    "close_abandoned_runs",
    "control_backfill",
    "ensure",
    "failed_sqlstate",
    "finish_attempt",
    "finish_phase_run",
    "lock_change",
    "phase_run_recorded",
    "record_change",
    "record_notebook",
    "start_attempt",
    "start_phase_run",
    "unlock_change",
]

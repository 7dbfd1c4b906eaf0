"""Build the Airflow DAG that runs one change across a fleet: per phase, one mapped task per target.

::

    expand[target] -> wave_expand -> (approve_expand -> signoff_expand) -> migrate[target] -> ...

Each ``PHASE[target]`` is :class:`~zdm_runbook.fleet.operators.PhaseOperator`. ``wave_PHASE`` runs
when every target is done (also after failures), reads each target's ledger and fails the wave
when more than ``max_failed_fraction`` of the targets have stopped. With ``approval="airflow"``, a
person approves each phase for the whole wave in Airflow (``ApprovalOperator``) and
``signoff_PHASE`` records one sign-off per target that completed it; with ``approval="ledger"``,
the next phase's tasks wait deferred until each target is signed off there (``zdm signoff``, the
notebook's form, or the ``signoff_by`` parameter for unattended waves).

Everything is checked when the DAG is built, so a bad spec, target or parameter is an import error
of the DAG file that names the field, before any task runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG

from zdm_runbook.core.errors import ConfigError, ParameterError, Problem
from zdm_runbook.fleet.operators import PhaseOperator, SignoffOperator, WaveOperator
from zdm_runbook.fleet.settings import from_environ
from zdm_runbook.fleet.targets import check_conn_id
from zdm_runbook.fleet.waves import DEFAULT_MAX_FAILED, check_fraction
from zdm_runbook.notebook.parameters import declared
from zdm_runbook.notebook.runner import check
from zdm_runbook.spec.model import Phase

Approval = Literal["airflow", "ledger"]
# Parameters the fleet sets itself, and why a DAG may not.
SET_BY_FLEET = {"dsn_env": "the fleet hands each target's DSN to its notebook itself"}


def _phases(phases: Iterable[Phase | str]) -> list[Phase]:
    try:
        chosen = [Phase(str(p.value if isinstance(p, Phase) else p).strip()) for p in phases]
    except ValueError as exc:
        raise ConfigError(f"phases: {exc}; choose from {', '.join(p.value for p in Phase)}") from None
    order = list(Phase)
    if not chosen:
        raise ConfigError("phases: at least one phase")
    if len(set(chosen)) != len(chosen) or chosen != sorted(chosen, key=order.index):
        raise ConfigError(
            "phases: each phase once, in order (" + " -> ".join(p.value for p in order) + f"), got {chosen}"
        )
    return chosen


def _targets(targets: Sequence[str]) -> list[str]:
    out = [check_conn_id(t.strip() if isinstance(t, str) else t) for t in targets]
    if not out:
        raise ConfigError("targets: at least one Airflow connection id")
    twice = sorted({t for t in out if out.count(t) > 1})
    if twice:
        raise ConfigError(f"targets: {', '.join(twice)} given twice")
    return out


def phase_parameters(
    spec: Path, phases: Sequence[Phase], parameters: Mapping[str, str]
) -> tuple[str, dict[Phase, dict[str, str]]]:
    """Check the notebook parameters for every phase (as ``zdm run -p`` would) and split them by
    the phases that declare them; returns the change id and each phase's parameters."""
    problems = [Problem(n, why) for n, why in SET_BY_FLEET.items() if n in parameters]
    known = {name for p in Phase for name in declared(p)}
    problems += [
        Problem(n, "not a parameter of any phase's notebook (see zdm run --help)")
        for n in parameters
        if n not in known and n not in SET_BY_FLEET
    ]
    if problems:
        raise ParameterError(problems)
    split = {p: {n: str(v) for n, v in parameters.items() if n in declared(p)} for p in phases}
    change_id = ""
    for p in phases:
        change_id = check(p, spec, split[p]).plan.change.id
    return change_id, split


def fleet_dag(
    *,
    spec: str | Path,
    targets: Sequence[str],
    archive: str | Path,
    phases: Iterable[Phase | str] = tuple(Phase),
    parameters: Mapping[str, str] | None = None,
    approval: Approval = "ledger",
    dag_id: str = "zdm_fleet",
    max_failed_fraction: float = DEFAULT_MAX_FAILED,
    max_active_targets: int | None = None,
    pool: str | None = None,
    retries: int = 2,
    retry_delay: timedelta = timedelta(minutes=2),
    gate_poll: timedelta = timedelta(minutes=1),
    gate_timeout: timedelta | None = timedelta(days=7),
    **dag_kwargs: Any,
) -> DAG:
    """The DAG of one change (``spec``) on ``targets`` (Airflow connection ids of PostgreSQL).

    ``archive``: each run is written to ``ARCHIVE/<target>/<change>/<phase>-<UTC>.ipynb`` and
    ``.html``. ``parameters``: notebook parameters as ``zdm run -p`` takes them (strings), each
    given to the phases that declare it. ``max_active_targets`` (or an Airflow ``pool``) bounds how
    many databases change at once. ``retries``/``retry_delay``: for failures time may cure (a lock
    held, a no-go preflight). ``gate_poll``/``gate_timeout``: how often a deferred gate is read,
    and how long a target may wait on it.
    """
    spec_path = Path(spec).resolve()
    chosen, fleet = _phases(phases), _targets(targets)
    if approval not in ("airflow", "ledger"):
        raise ConfigError(f"approval: 'airflow' (an approval task per phase) or 'ledger', got {approval!r}")
    try:
        max_failed = check_fraction(max_failed_fraction)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if max_active_targets is not None and max_active_targets < 1:
        raise ConfigError(f"max_active_targets: at least 1, got {max_active_targets}")
    change_id, split = phase_parameters(spec_path, chosen, dict(parameters or {}))
    dag_kwargs.setdefault("schedule", None)
    dag_kwargs.setdefault("start_date", datetime(2026, 1, 1))
    dag_kwargs.setdefault("catchup", False)
    dag_kwargs.setdefault("max_active_runs", 1)  # two waves of one change at once would fight
    dag_kwargs.setdefault("tags", ["zdm-runbook", change_id])
    dag_kwargs.setdefault(
        "doc_md",
        f"**{change_id}** on {len(fleet)} databases: {', '.join(p.value for p in chosen)}."
        f" Archives under `{Path(archive).resolve()}/<target>/{change_id}/`. Where each target"
        " stands: `zdm status --json` with that target's DSN.",
    )
    with DAG(dag_id, **dag_kwargs) as dag:
        tail: Any = None
        for phase in chosen:
            runs = PhaseOperator.partial(
                task_id=phase.value,
                phase=phase.value,
                spec=str(spec_path),
                archive=str(Path(archive).resolve()),
                parameters=split[phase],
                gate_poll=gate_poll,
                gate_timeout=gate_timeout,
                retries=retries,
                retry_delay=retry_delay,
                max_active_tis_per_dag=max_active_targets,
                map_index_template="{{ task.target }}",
                **({"pool": pool} if pool else {}),
            ).expand(target=fleet)
            if tail is not None:
                tail >> runs
            wave = WaveOperator(
                task_id=f"wave_{phase.value}",
                phase=phase.value,
                targets=fleet,
                change_id=change_id,
                max_failed=max_failed,
            )
            runs >> wave
            tail = wave
            if approval == "airflow":
                approve = ApprovalOperator(
                    task_id=f"approve_{phase.value}",
                    subject=f"Sign off {phase.value} of {change_id} on the fleet",
                    body=(
                        "{{ ti.xcom_pull(task_ids='wave_" + phase.value + "')['markdown'] }}\n\n"
                        f"Read each target's archived run under `{Path(archive).resolve()}/<target>/"
                        f"{change_id}/` first. Approve records one sign-off per target that completed"
                        f" {phase.value}, in its own ledger; Reject stops the wave."
                    ),
                )
                signoff = SignoffOperator(
                    task_id=f"signoff_{phase.value}",
                    phase=phase.value,
                    targets=fleet,
                    change_id=change_id,
                    approval_task_id=approve.task_id,
                )
                wave >> approve >> signoff
                tail = signoff
    return dag


def fleet_dag_from_env(environ: Mapping[str, str], **overrides: Any) -> DAG:
    """:func:`fleet_dag` with its settings from ``ZDM_FLEET_*`` variables (see
    :mod:`zdm_runbook.fleet.settings`); ``overrides`` win (``dag_id``, ``schedule``, ...)."""
    return fleet_dag(**{**from_environ(environ), **overrides})

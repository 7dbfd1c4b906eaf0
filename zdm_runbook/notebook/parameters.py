"""The parameters of the phase notebooks: one declaration, checked the same way everywhere.

The templates' ``parameters`` cells are written from :data:`PARAMETERS` (a test keeps them
equal); ``zdm run`` converts ``-p NAME VALUE`` strings by each default's type and checks them
with :func:`validate` before papermill starts, and the notebook checks them again, so a bad value
is refused, naming the field, before any statement runs. No parameter ever holds a DSN or a
password: ``dsn_env`` names the environment variable that holds the DSN.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zdm_runbook.core.connect import find_secrets
from zdm_runbook.core.durations import parse_duration
from zdm_runbook.core.errors import ParameterError, Problem
from zdm_runbook.execute.backfill import BackfillSettings, backfill_settings
from zdm_runbook.execute.guard import GuardSettings, settings_from
from zdm_runbook.plan.planner import Plan, build_plan
from zdm_runbook.spec.change import load_change
from zdm_runbook.spec.model import Phase

ALL = tuple(Phase)
MAX_TEXT = 10_000
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its default (whose type is the parameter's type) and what it does."""

    name: str
    default: str | int | float | bool
    help: str
    phases: tuple[Phase, ...] = ALL


PARAMETERS: tuple[Param, ...] = (
    Param("spec", "", "path of the change's YAML spec"),
    Param("dsn_env", "ZDM_DSN", "NAME of the environment variable holding the DSN (never the DSN)"),
    Param("lock_timeout", "1s", "longest wait for a lock per attempt; the app stalls at most this long"),
    Param("lock_timeout_first", "100ms", "first attempt's lock wait; doubles per attempt up to lock_timeout"),
    Param("statement_timeout", "60s", "longest run of one statement (index builds and scans get 4h)"),
    Param("max_attempts", 10, "tries per step when a lock wait times out or a deadlock is detected"),
    Param(
        "cancel_autovacuum",
        True,
        "cancel a regular autovacuum on the table before each attempt; it outlasts them",
    ),
    Param(
        "index_build_workers",
        0,
        "an index build's parallel workers; 0 builds in one backend, cores left to the app",
        (Phase.EXPAND, Phase.SWITCH),
    ),
    Param(
        "batch_size", 0, "rows per backfill batch; 0 sizes batches to target_batch_seconds", (Phase.MIGRATE,)
    ),
    Param("target_batch_seconds", 0.2, "how long one backfill batch should take", (Phase.MIGRATE,)),
    Param("deploy_cycle", "24h", "minimum time between the switch sign-off and contract", (Phase.CONTRACT,)),
    Param(
        "deploy_cycle_override", "", "a reason to contract before deploy_cycle has passed", (Phase.CONTRACT,)
    ),
    Param(
        "usage_window",
        "60s",
        "watch pg_stat_statements this long for apps still using what contract drops; 0s skips",
        (Phase.CONTRACT,),
    ),
    Param("compat_each_step", False, "run the app query sets after every applied step, not only at the end"),
    Param("require_go", True, "stop before any DDL when the preflight lock report says no-go"),
    Param(
        "ledger_published",
        False,
        "create the ledger though a FOR ALL TABLES publication publishes it",
    ),
    Param("dry_run", False, "show the gate, the preflight and the plan; execute nothing"),
    Param("headless", False, "True under `zdm run`: no widgets, progress as log lines"),
    Param("signoff_by", "", "headless: who signs the phase off when it succeeds (empty: sign off later)"),
    Param("signoff_ticket", "", "a change ticket recorded with the sign-off"),
    Param("signoff_notes", "", "notes recorded with the sign-off"),
    Param("run_id", "", "set by `zdm run`: ties the ledger's phase run to the archived notebook"),
)


def declared(phase: Phase | str) -> dict[str, Param]:
    """The parameters of one phase's notebook, by name, in cell order."""
    p = Phase(phase)
    return {par.name: par for par in PARAMETERS if p in par.phases}


def defaults(phase: Phase | str) -> dict[str, Any]:
    return {name: par.default for name, par in declared(phase).items()}


def coerce(phase: Phase | str, name: str, raw: str) -> Any:
    """``-p NAME VALUE`` from the command line, converted to the parameter's type."""
    params = declared(phase)
    if name not in params:
        known = ", ".join(params)
        raise ParameterError(
            [Problem(name, f"unknown parameter of the {Phase(phase).value} notebook; known: {known}")]
        )
    default = params[name].default
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low not in _TRUE | _FALSE:
                raise ValueError("expected true or false")
            return low in _TRUE
        if isinstance(default, int):
            return int(raw.strip())
        if isinstance(default, float):
            value = float(raw.strip())
            if not math.isfinite(value):
                raise ValueError("expected a finite number")
            return value
    except ValueError as exc:
        kind = type(default).__name__
        raise ParameterError([Problem(name, f"{raw[:60]!r} is not a valid {kind} ({exc})")]) from None
    return raw


@dataclass(frozen=True)
class RunParameters:
    """A phase run's parameters, checked: the loaded plan, the guard and backfill settings."""

    phase: Phase
    values: dict[str, Any]
    plan: Plan
    guard: GuardSettings
    backfill: BackfillSettings
    deploy_cycle_s: float
    usage_window_s: float
    run_id: uuid.UUID | None


def _type_problem(par: Param, value: Any) -> str | None:
    default = par.default
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be True or False"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be a whole number"
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a number"
    if not isinstance(value, str):
        return f"must be text, not {type(value).__name__}"
    if "\x00" in value:
        return "contains a NUL byte"
    if len(value) > MAX_TEXT:
        return f"is {len(value):,} characters long; at most {MAX_TEXT:,}"
    if find_secrets(value):
        return (
            "looks like it carries a password; parameters never hold secrets"
            " (put the DSN in the environment variable that dsn_env names)"
        )
    return None


def _check_values(phase: Phase, values: dict[str, Any]) -> list[Problem]:
    params = declared(phase)
    problems = [
        Problem(n, f"unknown parameter of the {phase.value} notebook") for n in values if n not in params
    ]
    for name, par in params.items():
        if name in values and (why := _type_problem(par, values[name])):
            problems.append(Problem(name, why))
    if problems:
        return problems
    if not str(values["spec"]).strip():
        problems.append(Problem("spec", "is empty: give the path of the change's YAML spec"))
    elif not Path(values["spec"]).is_file():
        problems.append(Problem("spec", f"no such file: {values['spec']}"))
    if not _ENV_NAME.match(values["dsn_env"]):
        problems.append(Problem("dsn_env", f"{values['dsn_env'][:60]!r} is not an environment variable name"))
    if values["run_id"]:
        try:
            uuid.UUID(values["run_id"])
        except ValueError:
            problems.append(Problem("run_id", "must be a UUID (zdm run sets it)"))
    if phase == Phase.MIGRATE:
        if not 0 <= values["batch_size"] <= 1_000_000:
            problems.append(Problem("batch_size", "must be 0 (adaptive) or from 1 to 1,000,000 rows"))
        if not 0.01 <= values["target_batch_seconds"] <= 60:
            problems.append(Problem("target_batch_seconds", "must be from 0.01 to 60 seconds"))
    return problems


def validate(phase: Phase | str, given: Mapping[str, Any]) -> RunParameters:
    """Check every parameter (all problems at once), then load the spec and build its plan.

    Raises :class:`ParameterError` naming each bad parameter, or ``SpecError`` for the spec."""
    p = Phase(phase)
    values = {**defaults(p), **dict(given)}
    problems = _check_values(p, values)
    guard: GuardSettings | None = None
    fill: BackfillSettings | None = None
    cycle = window = 0.0
    if not problems:
        timeouts = {k: values[k] for k in ("lock_timeout", "statement_timeout")}
        guarded: dict[str, Any] = {  # the rest of the guard's settings this phase takes
            k: values[k]
            for k in ("lock_timeout_first", "max_attempts", "cancel_autovacuum", "index_build_workers")
            if k in values
        }
        try:
            guard = settings_from({**timeouts, **guarded}, path="p")
        except ParameterError as exc:
            problems += [Problem(x.path.removeprefix("p."), x.message) for x in exc.problems]
        fixed = values.get("batch_size") or 0
        sizes = {"start_batch_size": fixed, "min_batch_size": fixed, "max_batch_size": fixed} if fixed else {}
        target = {"target_batch": values["target_batch_seconds"]} if p == Phase.MIGRATE else {}
        try:
            fill = backfill_settings({**timeouts, **sizes, **target}, path="p")
        except ParameterError as exc:
            problems += [Problem(x.path.removeprefix("p."), x.message) for x in exc.problems if guard]
        if p == Phase.CONTRACT:
            for name in ("deploy_cycle", "usage_window"):
                try:
                    seconds = parse_duration(values[name], allow_zero=True)
                except ValueError as exc:
                    problems.append(Problem(name, str(exc)))
                    continue
                if name == "deploy_cycle":
                    cycle = seconds
                elif seconds > 3600:
                    problems.append(Problem(name, "at most 1h: the gate waits this long"))
                else:
                    window = seconds
    if problems or guard is None or fill is None:
        raise ParameterError(problems)
    plan = build_plan(load_change(values["spec"]))
    run_id = uuid.UUID(values["run_id"]) if values["run_id"] else None
    return RunParameters(p, values, plan, guard, fill, cycle, window, run_id)


def for_ledger(values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters as recorded with a phase run (the ledger redacts the text again)."""
    return {k: v for k, v in values.items() if k != "run_id"}

"""A fleet DAG's settings from environment variables, so one DAG file serves any fleet.

``ZDM_FLEET_SPEC`` (the spec's path) and ``ZDM_FLEET_TARGETS`` (comma-separated Airflow connection
ids) are required. ``ZDM_FLEET_PHASES`` (comma-separated, default all four), ``ZDM_FLEET_ARCHIVE``
(default ``~/zdm-archive``), ``ZDM_FLEET_APPROVAL`` (``ledger`` or ``airflow``),
``ZDM_FLEET_MAX_FAILED`` (a fraction, default 0.1), ``ZDM_FLEET_MAX_ACTIVE`` (databases changed at
once), ``ZDM_FLEET_POOL``, ``ZDM_FLEET_RETRIES``, ``ZDM_FLEET_RETRY_DELAY`` and
``ZDM_FLEET_GATE_POLL`` (durations such as ``90s`` or ``2min``) shape the DAG. Notebook parameters
come as ``ZDM_FLEET_PARAM_<NAME>`` (``ZDM_FLEET_PARAM_LOCK_TIMEOUT=2s``), and ``ZDM_FLEET_SIGNOFF_BY``
is short for ``ZDM_FLEET_PARAM_SIGNOFF_BY`` (unattended waves: each run signs itself off).

Every problem is reported at once, naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from zdm_runbook.core.durations import parse_duration
from zdm_runbook.core.errors import ConfigError
from zdm_runbook.fleet.waves import DEFAULT_MAX_FAILED

PREFIX = "ZDM_FLEET_"
PARAM_PREFIX = PREFIX + "PARAM_"
KNOWN = frozenset(
    PREFIX + n
    for n in (
        "SPEC",
        "TARGETS",
        "PHASES",
        "ARCHIVE",
        "APPROVAL",
        "MAX_FAILED",
        "MAX_ACTIVE",
        "POOL",
        "RETRIES",
        "RETRY_DELAY",
        "GATE_POLL",
        "SIGNOFF_BY",
        "DSN",  # the variable through which a fleet task hands its target's DSN to the notebook
    )
)


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of :func:`zdm_runbook.fleet.dag.fleet_dag` from ``environ``."""
    problems: list[str] = []

    def get(name: str, default: str | None = None) -> str | None:
        value = environ.get(PREFIX + name, "").strip()
        return value or default

    def number(name: str, kind: type[int] | type[float], default: Any) -> Any:
        text = get(name)
        if text is None:
            return default
        try:
            return kind(text)
        except ValueError:
            problems.append(f"{PREFIX}{name}={text[:40]!r}: not a {kind.__name__}")
            return default

    def duration(name: str, default: timedelta) -> timedelta:
        text = get(name)
        if text is None:
            return default
        try:
            return timedelta(seconds=parse_duration(text))
        except ValueError as exc:
            problems.append(f"{PREFIX}{name}={text[:40]!r}: {exc}")
            return default

    spec, targets = get("SPEC"), get("TARGETS")
    if spec is None:
        problems.append(f"{PREFIX}SPEC is not set: the path of the change's YAML spec")
    elif not Path(spec).is_file():
        problems.append(f"{PREFIX}SPEC={spec!r}: no such file")
    if targets is None:
        problems.append(f"{PREFIX}TARGETS is not set: comma-separated Airflow connection ids")
    parameters = {
        name[len(PARAM_PREFIX) :].lower(): value
        for name, value in environ.items()
        if name.startswith(PARAM_PREFIX)
    }
    if get("SIGNOFF_BY"):
        parameters.setdefault("signoff_by", str(get("SIGNOFF_BY")))
    unknown = sorted(
        n for n in environ if n.startswith(PREFIX) and n not in KNOWN and not n.startswith(PARAM_PREFIX)
    )
    problems += [f"{n}: not a setting of the fleet DAG (known: {', '.join(sorted(KNOWN))})" for n in unknown]
    settings: dict[str, Any] = {
        "spec": spec,
        "targets": [t.strip() for t in (targets or "").split(",") if t.strip()],
        "phases": [p for p in (get("PHASES") or "expand,migrate,switch,contract").split(",") if p.strip()],
        "archive": Path(get("ARCHIVE") or "~/zdm-archive").expanduser(),
        "approval": get("APPROVAL", "ledger"),
        "parameters": parameters,
        "max_failed_fraction": number("MAX_FAILED", float, DEFAULT_MAX_FAILED),
        "max_active_targets": number("MAX_ACTIVE", int, None),
        "pool": get("POOL"),
        "retries": number("RETRIES", int, 2),
        "retry_delay": duration("RETRY_DELAY", timedelta(minutes=2)),
        "gate_poll": duration("GATE_POLL", timedelta(minutes=1)),
    }
    if problems:
        raise ConfigError("the fleet DAG's environment:\n" + "\n".join(f"  - {p}" for p in problems))
    return settings

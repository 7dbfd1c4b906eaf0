"""How long a step may wait and run, and how often it is retried: the guarded executor's settings.

Defaults, and why:

- ``lock_timeout = 1s`` for steps in a transaction. While a DDL waits for its lock, every later
  query on the table queues behind it, so this is the longest the app can stall per attempt.
  Catalog-only DDL needs its lock for milliseconds once granted; a short wait and a retry beat a
  long wait. (The founding design's example is 5 s; raise it per run or per step if the table
  is held by transactions that legitimately last longer.)
- The lock-wait ladder, ``lock_timeout_first = 100ms``: a catalog-only step (in a transaction, not
  a scan) waits 100 ms for its lock on the first attempt, and the wait doubles per attempt up to
  ``lock_timeout`` (100, 200, 400, 800 ms, then 1 s), as GitLab's ``with_lock_retries`` does. An
  attempt that meets a long-held lock fails after 100 ms instead of queueing the app behind it
  for a full second; one that meets a short-lived lock is granted at once. ``0`` turns it off.
- ``concurrent_lock_timeout = 5min`` for CONCURRENTLY statements. Their waits (for transactions
  older than the index build) never queue app queries, and a timeout there leaves an INVALID
  index whose rebuild costs a whole table scan, so they may wait longer.
- ``statement_timeout = 1min`` for ordinary DDL; ``long_statement_timeout = 4h`` for steps that scan
  the table (VALIDATE, index builds) or wait for other transactions (CONCURRENTLY).
- Retries: ``max_attempts = 10``, full-jitter exponential backoff, the sleep before attempt n+1
  drawn uniformly from [0, min(30 s, 1 s x 2^(n-1))]. Between attempts the app's queued queries
  drain, so the sleeps grow quickly; jitter keeps two migrators (or a migrator and a retrying
  app) from colliding again in lockstep; the cap bounds the retry window to about three minutes at
  worst (10 waits of 1 s plus at most 1+2+4+8+16+30+30+30+30 s of sleep, half that on average),
  after which the blockers are reported to a human.
- ``cancel_autovacuum = true``: before each attempt of a step in a transaction, a regular
  autovacuum on the step's tables is cancelled, as PostgreSQL itself cancels one that blocks a
  lock request for ``deadlock_timeout``; an attempt gives up sooner than that, so without this
  every attempt would fail behind the vacuum (see :mod:`zdm_runbook.execute.vacuum_yield`).
- ``index_build_workers = 0``: an index build (``CREATE INDEX CONCURRENTLY``) runs with
  ``max_parallel_maintenance_workers`` set to this. PostgreSQL's default, 2, lets a build start up
  to two workers beside its own backend, on the cores the app needs. Beside pgbench's TPC-B at
  half its full-speed rate on 2 cores, ten 1,000,000-row builds a variant
  (``bench/index_build.py``): the app's median during a build was 4.75 ms (the median of the ten)
  with the default and 2.60 ms with 0, and the build took as long. Raise it on a server with
  cores to spare, or in a quiet hour.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from zdm_runbook.core.durations import parse_duration
from zdm_runbook.core.errors import ParameterError, Problem

MAX_ATTEMPTS_LIMIT = 100
MAX_INDEX_BUILD_WORKERS = 1024  # max_parallel_maintenance_workers' own upper bound
T = TypeVar("T")


@dataclass(frozen=True)
class GuardSettings:
    """Timeouts (seconds) and retry policy for guarded steps; see the module text for defaults."""

    lock_timeout: float = 1.0
    lock_timeout_first: float = 0.1
    concurrent_lock_timeout: float = 300.0
    statement_timeout: float = 60.0
    long_statement_timeout: float = 4 * 3600.0
    max_attempts: int = 10
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    cancel_autovacuum: bool = True
    index_build_workers: int = 0

    def timeouts_for(self, transactional: bool, long_running: bool) -> dict[str, float]:
        """The ``lock_timeout`` and ``statement_timeout`` a step of this kind runs with."""
        lock = self.lock_timeout if transactional else self.concurrent_lock_timeout
        stmt = self.long_statement_timeout if long_running or not transactional else self.statement_timeout
        return {"lock_timeout": lock, "statement_timeout": stmt}

    def attempt_timeouts(
        self, timeouts: Mapping[str, float], attempt: int, catalog_only: bool
    ) -> dict[str, float]:
        """The timeouts of attempt ``attempt`` (1-based): on the ladder for a catalog-only step,
        ``lock_timeout_first`` doubled per attempt up to ``lock_timeout``; else ``timeouts``."""
        if not catalog_only or self.lock_timeout_first <= 0:
            return dict(timeouts)
        rung = min(timeouts["lock_timeout"], self.lock_timeout_first * 2 ** (attempt - 1))
        return {**timeouts, "lock_timeout": rung}

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep after failed attempt ``attempt`` (1-based): full jitter, capped."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return (rng or random).uniform(0.0, ceiling)

    def to_dict(self) -> dict[str, float | int | bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_DURATIONS = {
    "lock_timeout",
    "lock_timeout_first",
    "concurrent_lock_timeout",
    "statement_timeout",
    "long_statement_timeout",
    "backoff_base",
    "backoff_cap",
}


def read_settings(
    base: T,
    values: Mapping[str, Any] | None,
    path: str,
    ranges: Mapping[str, tuple[int, int]],
    zero_ok: frozenset[str] = frozenset(),
    fractions: frozenset[str] = frozenset(),
    ratios: frozenset[str] = frozenset(),
) -> tuple[T, list[Problem]]:
    """``base`` (a settings dataclass) with ``values`` applied: float fields are durations
    (``zero_ok``: zero allowed), ``fractions`` in (0, 1] or ``ratios`` from 1 to 100, int fields
    whole numbers within ``ranges``. Returns the result and every problem, by field path."""
    problems: list[Problem] = []
    changes: dict[str, Any] = {}
    kinds = {f.name: type(getattr(base, f.name)) for f in fields(base)}  # type: ignore[arg-type]
    for key, value in (values or {}).items():
        where = f"{path}.{key}"
        if key not in kinds:
            problems.append(Problem(where, f"unknown setting; expected one of {', '.join(sorted(kinds))}"))
        elif key in fractions:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                problems.append(Problem(where, "must be a fraction greater than 0 and at most 1"))
            else:
                changes[key] = float(value)
        elif key in ratios:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 1 < value <= 100:
                problems.append(Problem(where, "must be a ratio greater than 1 and at most 100, such as 1.3"))
            else:
                changes[key] = float(value)
        elif kinds[key] is bool:
            if not isinstance(value, bool):
                problems.append(Problem(where, "must be true or false"))
            else:
                changes[key] = value
        elif kinds[key] is int:
            low, high = ranges.get(key, (0, 2**31 - 1))
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(Problem(where, f"must be a whole number from {low} to {high}"))
            else:
                changes[key] = value
        else:
            try:
                changes[key] = parse_duration(value, allow_zero=key in zero_ok)
            except ValueError as exc:
                problems.append(Problem(where, str(exc)))
    return replace(base, **changes), problems  # type: ignore[type-var]


def settings_from(
    values: Mapping[str, Any] | None,
    base: GuardSettings | None = None,
    path: str = "guard",
) -> GuardSettings:
    """``base`` with ``values`` applied, every field checked; :class:`ParameterError` lists all problems."""
    result, problems = read_settings(
        base or GuardSettings(),
        values,
        path,
        {"max_attempts": (1, MAX_ATTEMPTS_LIMIT), "index_build_workers": (0, MAX_INDEX_BUILD_WORKERS)},
        zero_ok=frozenset({"lock_timeout_first"}),
    )
    if not problems:
        problems += _consistency(result, path)
    if problems:
        raise ParameterError(problems)
    return result


def _consistency(s: GuardSettings, path: str) -> list[Problem]:
    out = []
    if s.lock_timeout >= s.statement_timeout:
        out.append(
            Problem(
                f"{path}.lock_timeout",
                f"must be shorter than statement_timeout ({s.statement_timeout:g} s), or a lock"
                " wait would be cancelled as a statement timeout and not retried",
            )
        )
    if s.concurrent_lock_timeout >= s.long_statement_timeout:
        out.append(
            Problem(
                f"{path}.concurrent_lock_timeout",
                f"must be shorter than long_statement_timeout ({s.long_statement_timeout:g} s)",
            )
        )
    if s.backoff_cap < s.backoff_base:
        out.append(Problem(f"{path}.backoff_cap", f"must be at least backoff_base ({s.backoff_base:g} s)"))
    return out


def step_settings_from(
    overrides: Mapping[str, Mapping[str, Any]] | None,
    base: GuardSettings,
    step_keys: list[str],
) -> dict[str, GuardSettings]:
    """Per-step settings keyed by step key, each on top of ``base``; unknown keys are an error."""
    problems: list[Problem] = []
    out: dict[str, GuardSettings] = {}
    for key, values in (overrides or {}).items():
        if key not in step_keys:
            hint = ", ".join(step_keys) or "none"
            problems.append(Problem(f"step_settings.{key}", f"no such step in this phase (steps: {hint})"))
            continue
        if not isinstance(values, Mapping):
            problems.append(Problem(f"step_settings.{key}", "must be a mapping of settings"))
            continue
        try:
            out[key] = settings_from(values, base, f"step_settings.{key}")
        except ParameterError as exc:
            problems += exc.problems
    if problems:
        raise ParameterError(problems)
    return out

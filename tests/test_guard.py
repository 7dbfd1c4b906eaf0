"""Guard settings: durations, validation naming the field, and the full-jitter backoff."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from zdm_runbook.core.durations import parse_duration
from zdm_runbook.core.errors import ParameterError
from zdm_runbook.execute.guard import GuardSettings, settings_from, step_settings_from
from zdm_runbook.notebook.parameters import validate


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(5, 5.0), (0.5, 0.5), ("5s", 5.0), ("500ms", 0.5), ("2min", 120.0), ("1h", 3600.0), (" 1.5 s ", 1.5)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [0, "0s", -1, "5 days", "soon", True, None, "1e3"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match=r"duration|greater than zero"):
        parse_duration(value)


def test_defaults_by_step_kind() -> None:
    g = GuardSettings()
    assert g.timeouts_for(transactional=True, long_running=False) == {
        "lock_timeout": 1.0,
        "statement_timeout": 60.0,
    }
    assert g.timeouts_for(transactional=True, long_running=True)["statement_timeout"] == 4 * 3600
    assert g.timeouts_for(transactional=False, long_running=True) == {
        "lock_timeout": 300.0,
        "statement_timeout": 4 * 3600,
    }


def test_every_problem_is_named_by_field() -> None:
    with pytest.raises(ParameterError) as err:
        settings_from({"lock_timeout": "0", "max_attempts": 0, "lock_timout": "1s", "backoff_cap": "fast"})
    paths = [p.path for p in err.value.problems]
    assert paths == ["guard.lock_timeout", "guard.max_attempts", "guard.lock_timout", "guard.backoff_cap"]
    assert "unknown setting; expected one of" in str(err.value)
    assert "in the parameters" in str(err.value)


def test_lock_timeout_must_be_shorter_than_statement_timeout() -> None:
    with pytest.raises(ParameterError, match=r"guard.lock_timeout: must be shorter than statement_timeout"):
        settings_from({"lock_timeout": "2min"})
    with pytest.raises(ParameterError, match=r"backoff_cap: must be at least backoff_base"):
        settings_from({"backoff_base": "10s", "backoff_cap": "1s"})


def test_step_overrides_apply_on_top_of_the_run_settings() -> None:
    base = settings_from({"lock_timeout": "2s"})
    per = step_settings_from({"01-a": {"statement_timeout": "10min"}}, base, ["01-a", "02-b"])
    assert per["01-a"].lock_timeout == 2.0
    assert per["01-a"].statement_timeout == 600.0
    with pytest.raises(ParameterError) as err:
        step_settings_from({"09-x": {}, "01-a": {"lock_timeout": "nope"}}, base, ["01-a"])
    assert [p.path for p in err.value.problems] == ["step_settings.09-x", "step_settings.01-a.lock_timeout"]
    assert "no such step in this phase (steps: 01-a)" in str(err.value)


def test_full_jitter_backoff_is_bounded_by_the_capped_exponential() -> None:
    g = GuardSettings(backoff_base=0.5, backoff_cap=4.0)
    rng = random.Random(7)  # noqa: S311 - jitter
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        draws = [g.backoff(attempt, rng) for _ in range(2000)]
        assert min(draws) >= 0.0
        assert max(draws) <= ceiling
        assert max(draws) > 0.9 * ceiling  # spread over the whole range, not a fixed delay
        assert min(draws) < 0.1 * ceiling


def test_the_lock_wait_ladder_climbs_to_lock_timeout_for_catalog_only_steps() -> None:
    g = GuardSettings()
    base = g.timeouts_for(transactional=True, long_running=False)
    rungs = [g.attempt_timeouts(base, n, catalog_only=True)["lock_timeout"] for n in range(1, 8)]
    assert rungs == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert g.attempt_timeouts(base, 1, catalog_only=True)["statement_timeout"] == 60.0
    scan = g.timeouts_for(transactional=True, long_running=True)  # VALIDATE: it waits as it always did
    assert g.attempt_timeouts(scan, 1, catalog_only=False) == scan
    off = settings_from({"lock_timeout_first": "0"})
    assert off.attempt_timeouts(base, 1, catalog_only=True) == base
    with pytest.raises(ParameterError, match=r"guard.lock_timeout_first"):
        settings_from({"lock_timeout_first": "soon"})


def test_the_notebook_parameter_cancel_autovacuum_reaches_the_guard(tmp_path: Path) -> None:
    spec = tmp_path / "change.yaml"
    spec.write_text("change: add-x\noperations:\n  - add_column: {table: t, column: x, type: int}\n")
    assert validate("expand", {"spec": str(spec)}).guard.cancel_autovacuum is True
    assert (
        validate("expand", {"spec": str(spec), "cancel_autovacuum": False}).guard.cancel_autovacuum is False
    )
    with pytest.raises(ParameterError, match=r"cancel_autovacuum: must be True or False"):
        validate("expand", {"spec": str(spec), "cancel_autovacuum": "maybe"})


def test_the_notebook_parameter_index_build_workers_reaches_the_guard(tmp_path: Path) -> None:
    spec = tmp_path / "change.yaml"
    spec.write_text("change: add-x\noperations:\n  - add_column: {table: t, column: x, type: int}\n")
    assert validate("expand", {"spec": str(spec)}).guard.index_build_workers == 0
    assert validate("switch", {"spec": str(spec), "index_build_workers": 2}).guard.index_build_workers == 2
    with pytest.raises(ParameterError, match=r"index_build_workers: .*1024"):
        validate("expand", {"spec": str(spec), "index_build_workers": -1})
    with pytest.raises(ParameterError, match=r"index_build_workers: unknown parameter of the migrate"):
        validate("migrate", {"spec": str(spec), "index_build_workers": 2})

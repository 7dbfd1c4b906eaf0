"""The ``zdm`` command as a user runs it: a real process, real exit codes, real stderr."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from .helpers import zdm

EXAMPLES = Path(__file__).resolve().parent.parent / "zdm_runbook" / "examples"


@pytest.mark.parametrize("spec", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_plan_prints_four_phases_for_every_example(spec: Path) -> None:
    result = zdm("plan", str(spec))
    assert result.returncode == 0, result.stderr
    for phase in ("expand", "migrate", "switch", "contract"):
        assert f"== {phase} (" in result.stdout
    data = json.loads(zdm("plan", str(spec), "--json").stdout)
    assert list(data["phases"]) == ["expand", "migrate", "switch", "contract"]
    assert any(
        step["transaction"] is False or "INDEX" not in step["sql"]
        for steps in data["phases"].values()
        for step in steps
    )


def test_every_recipe_has_an_example() -> None:
    text = "".join(p.read_text() for p in EXAMPLES.glob("*.yaml"))
    recipes = ("rename_column:", "change_type:", "change_key_type:", "add_not_null_column:", "rename_table:")
    for recipe in recipes:
        assert recipe in text


def test_bad_spec_exits_2_with_every_problem(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "change: c1\noperations:\n"
        "  - add_column: {table: orders, column: 'customer uuid', type: uuid}\n"
        "  - add_column: {table: orders, column: c, type: int, default: 'random()'}\n"
    )
    result = zdm("plan", str(spec))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "operations[0].add_column.column: 'customer uuid' is not a valid identifier" in result.stderr
    assert "operations[1].add_column.default: random() is volatile" in result.stderr


def test_missing_spec_file_exits_2() -> None:
    result = zdm("plan", "/nonexistent/spec.yaml")
    assert result.returncode == 2
    assert "cannot read /nonexistent/spec.yaml" in result.stderr


def test_plan_checks_the_catalog_with_dsn_env(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_id int)")
    spec = str(EXAMPLES / "orders-customer-ref.yaml")
    ok = zdm("plan", spec, "--dsn-env", "TEST_TARGET", env={"TEST_TARGET": db})
    assert ok.returncode == 0, ok.stderr
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders RENAME COLUMN customer_id TO cust")
    bad = zdm("plan", spec, "--dsn-env", "TEST_TARGET", env={"TEST_TARGET": db})
    assert bad.returncode == 2
    assert (
        "operations[0].change_type.column: column customer_id does not exist in public.orders" in bad.stderr
    )


def test_unset_dsn_variable_exits_2() -> None:
    result = zdm("plan", str(EXAMPLES / "orders-customer-ref.yaml"), "--dsn-env", "ZDM_UNSET_FOR_TEST")
    assert result.returncode == 2
    assert "ZDM_UNSET_FOR_TEST is not set" in result.stderr


def test_unreachable_database_names_no_password() -> None:
    dsn = "host=/nonexistent-socket-dir user=app password=NeverPrintMe dbname=x"
    result = zdm("plan", str(EXAMPLES / "orders-customer-ref.yaml"), "--dsn-env", "T", env={"T": dsn})
    assert result.returncode == 1
    assert "cannot connect" in result.stderr
    assert "NeverPrintMe" not in result.stderr + result.stdout


def test_help_answers_the_basics() -> None:
    top = zdm("--help").stdout
    assert "plan" in top and "db" in top and "ZDM_DSN" in top
    assert "zdm db url" in zdm("db", "--help").stdout

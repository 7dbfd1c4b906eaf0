"""set_default and drop_default: catalog-only changes in the phase the old app can live with,
applied on real servers (18, and 15), with the old app's INSERT checked after each phase."""

from __future__ import annotations

import psycopg
import pytest

from zdm_runbook.core.errors import SpecError
from zdm_runbook.plan.planner import build_plan
from zdm_runbook.spec.catalog import check_change
from zdm_runbook.spec.change import parse_change
from zdm_runbook.spec.model import Phase

from .helpers import apply_phase, scalar

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, kind text NOT NULL DEFAULT 'plain', note text DEFAULT 'n/a', qty int);
INSERT INTO items (id) SELECT g FROM generate_series(1, 10) g;
"""
SPEC = """
change: item-defaults
operations:
  - set_default: {table: items, column: qty, default: "1"}
  - drop_default: {table: items, column: kind}
  - drop_default: {table: items, column: note, phase: expand}
"""
OLD_APP_INSERT = "INSERT INTO items (id) VALUES (%s) RETURNING kind, note, qty"


@pytest.fixture
def items(any_pg_db: str) -> str:
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
    return any_pg_db


def _default(dsn: str, column: str) -> str | None:
    value = scalar(
        dsn,
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d"
        " ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = 'items'::regclass"
        " AND a.attname = %s",
        [column],
    )
    return None if value is None else str(value)


def test_defaults_change_in_their_phases_and_the_old_app_keeps_inserting(items: str) -> None:
    plan = build_plan(parse_change(SPEC))
    assert {s.key: s.phase for s in plan.steps} == {
        "01-set_default-set": Phase.EXPAND,
        "02-drop_default-drop": Phase.CONTRACT,  # kind is NOT NULL: the old app relies on its default
        "03-drop_default-drop": Phase.EXPAND,
    }
    with psycopg.connect(items, autocommit=True) as conn:
        assert check_change(conn, plan.change) == []
    expected = {
        "expand": ("plain", None, 1),
        "migrate": ("plain", None, 1),
        "switch": ("plain", None, 1),
    }
    for n, phase in enumerate(("expand", "migrate", "switch"), start=100):
        apply_phase(items, plan, phase)
        with psycopg.connect(items, autocommit=True) as conn:
            assert conn.execute(OLD_APP_INSERT, [n]).fetchone() == expected[phase], phase
    assert _default(items, "kind") == "'plain'::text"
    assert apply_phase(items, plan, "contract") == {"02-drop_default-drop": "applied"}
    assert (_default(items, "kind"), _default(items, "note"), _default(items, "qty")) == (None, None, "1")
    # Re-running every phase changes nothing.
    for phase in ("expand", "contract"):
        assert set(apply_phase(items, plan, phase).values()) <= {"skipped"}


def test_dropping_a_not_null_columns_default_before_contract_is_refused(items: str) -> None:
    change = parse_change(
        "change: early\noperations:\n  - drop_default: {table: items, column: kind, phase: switch}\n"
    )
    with psycopg.connect(items, autocommit=True) as conn:
        problems = [str(p) for p in check_change(conn, change)]
    assert problems == [
        "operations[0].drop_default.phase: public.items.kind is NOT NULL: the old app's INSERTs that"
        " leave it out rely on its default, so it is dropped in contract, not switch"
    ]
    assert _default(items, "kind") == "'plain'::text"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "{table: items, column: kind, phase: migrate}",
            "drop_default.phase: a default is dropped in expand",
        ),
        ("{table: items, column: kind, phase: later}", "drop_default.phase: 'later' is not one of"),
        ("{table: items, column: qty}", None),
    ],
)
def test_drop_default_phase_is_read_by_field(body: str, problem: str | None) -> None:
    text = f"change: x\noperations:\n  - drop_default: {body}\n"
    if problem is None:
        assert build_plan(parse_change(text)).steps[0].phase == Phase.CONTRACT
        return
    with pytest.raises(SpecError, match=problem):
        parse_change(text)


def test_set_default_is_type_checked_against_the_column(items: str) -> None:
    change = parse_change(
        "change: x\noperations:\n  - set_default: {table: items, column: qty, default: \"'many'\"}\n"
    )
    with psycopg.connect(items, autocommit=True) as conn:
        (problem,) = check_change(conn, change)
    assert problem.path == "operations[0].set_default.default" and "integer" in problem.message

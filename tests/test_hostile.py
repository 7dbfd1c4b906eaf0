"""Hostile and malformed input through ``zdm run``, as a pipeline would pass it: every case gets a
clear error naming the problem, exit status 2 (bad input) or 3 (a gate refused), and a fingerprint
of the database's schema and data identical before and after.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import fingerprint, zdm

HEAD = "change: hostile\noperations:\n"
FAKE_PASSWORD = "hunter" + "2"  # built here so no credential-shaped literal sits in the repository
OK_OP = "  - add_column: {table: orders, column: extra, type: int}\n"

# (id, spec text or None for the valid one, extra arguments, exit status, fragment of stderr)
CASES: list[tuple[str, str | None, list[str], int, str]] = [
    # SQL injection in identifiers and expressions
    (
        "table-injection",
        HEAD + "  - add_column: {table: 'orders; DROP TABLE orders', column: x, type: int}",
        [],
        2,
        "operations[0].add_column.table",
    ),
    (
        "column-injection",
        HEAD + """  - add_column: {table: orders, column: 'x" int; DROP TABLE orders; --', type: int}""",
        [],
        2,
        "operations[0].add_column.column",
    ),
    (
        "type-injection",
        HEAD + "  - add_column: {table: orders, column: x, type: 'int; DROP TABLE orders'}",
        [],
        2,
        "operations[0].add_column.type",
    ),
    (
        "using-injection",
        HEAD
        + """  - change_type: {table: orders, column: customer_id, new_column: c2, type: bigint,
                  using: "customer_id::bigint); DROP TABLE orders; --(", reverse: "c2::int"}""",
        [],
        2,
        "operations[0].change_type.using",
    ),
    (
        "default-second-statement",
        HEAD + """  - add_column: {table: orders, column: x, type: int, default: "1; DELETE FROM orders"}""",
        [],
        2,
        "operations[0].add_column.default",
    ),
    (
        "backfill-subquery-delete",
        HEAD + """  - backfill: {table: orders, set: {note: "(DELETE FROM orders RETURNING 'x')"}}""",
        [],
        2,
        "operations[0].backfill.set.note",
    ),
    (
        "comment-trick",
        HEAD + """  - backfill: {table: orders, set: {note: "'a' /* */; DROP TABLE orders --"}}""",
        [],
        2,
        "operations[0].backfill.set.note",
    ),
    (
        "side-effect-function",
        HEAD + """  - backfill: {table: orders, set: {note: "pg_terminate_backend(1)::text"}}""",
        [],
        2,
        "side effects",
    ),
    # unknown tables, columns and types; wrong types
    (
        "unknown-table",
        HEAD + "  - add_column: {table: no_such_table, column: x, type: int}",
        [],
        2,
        "operations[0].add_column.table",
    ),
    (
        "unknown-column",
        HEAD
        + """  - change_type: {table: orders, column: nope, new_column: c2, type: bigint,
                  using: "nope::bigint", reverse: "c2::int"}""",
        [],
        2,
        "nope",
    ),
    ("unknown-type", HEAD + "  - add_column: {table: orders, column: x, type: integr}", [], 2, "integr"),
    (
        "expression-of-wrong-type",
        HEAD
        + """  - add_not_null_column: {table: orders, column: x, type: int, default: "0",
                          backfill: "now()"}""",
        [],
        2,
        "operations[0].add_not_null_column.backfill",
    ),
    (
        "unknown-column-in-expression",
        HEAD + """  - backfill: {table: orders, set: {note: "no_such_col::text"}}""",
        [],
        2,
        "no_such_col",
    ),
    # volatile defaults, destructive statements in the wrong phase
    (
        "volatile-default",
        HEAD + "  - add_column: {table: orders, column: x, type: float8, default: 'random()'}",
        [],
        2,
        "operations[0].add_column.default",
    ),
    (
        "drop-in-expand",
        HEAD
        + """  - raw_sql: {phase: expand, reason: cleanup, sql: "ALTER TABLE orders DROP COLUMN note"}""",
        [],
        2,
        "operations[0].raw_sql.sql",
    ),
    (
        "rename-in-place",
        HEAD
        + """  - raw_sql: {phase: switch, reason: tidy, sql: "ALTER TABLE orders RENAME COLUMN note TO remark"}""",
        [],
        2,
        "operations[0].raw_sql.sql",
    ),
    # malformed files
    ("nul-byte", HEAD + "  - add_column: {table: orders, column: x\x00, type: int}", [], 2, "NUL byte"),
    (
        "huge-description",
        "change: hostile\ndescription: '" + "x" * 20_000 + "'\noperations:\n" + OK_OP,
        [],
        2,
        "description",
    ),
    ("huge-file", HEAD + OK_OP + "#" + "x" * 2_000_000 + "\n", [], 2, "bytes; at most"),
    ("not-yaml", "change: [unclosed\n", [], 2, "not valid YAML"),
    (
        "unknown-operation",
        HEAD + "  - frobnicate: {table: orders}",
        [],
        2,
        "'frobnicate' is not an operation",
    ),
    (
        "unknown-field",
        HEAD + "  - add_column: {table: orders, column: x, type: int, colour: red}",
        [],
        2,
        "operations[0].add_column.colour: is not a known field",
    ),
    ("bad-change-id", "change: 'Bad Id!'\noperations:\n" + OK_OP, [], 2, "is not a change id"),
    (
        "bad-compat-statement",
        HEAD + OK_OP + "compat: {old: [{sql: 'DROP TABLE orders'}]}",
        [],
        2,
        "compat.old[0].sql: must be an app statement",
    ),
    # parameters: missing, unknown, wrong kinds, huge values, secrets
    ("unknown-parameter", None, ["-p", "lock_timout", "2s"], 2, "lock_timout: unknown parameter"),
    (
        "parameter-wrong-type",
        None,
        ["-p", "max_attempts", "ten"],
        2,
        "max_attempts: 'ten' is not a valid int",
    ),
    (
        "parameter-bad-duration",
        None,
        ["-p", "lock_timeout", "forever"],
        2,
        "lock_timeout: expected a duration",
    ),
    ("parameter-negative", None, ["-p", "lock_timeout", "-5s"], 2, "lock_timeout"),
    (
        "parameter-out-of-range",
        None,
        ["-p", "max_attempts", "100000"],
        2,
        "max_attempts: must be a whole number",
    ),
    (
        "parameter-inconsistent",
        None,
        ["-p", "statement_timeout", "500ms"],
        2,
        "lock_timeout: must be shorter",
    ),
    (
        "parameter-huge",
        None,
        ["-p", "signoff_notes", "n" * 20_000],
        2,
        "signoff_notes: is 20,000 characters long",
    ),
    (
        "parameter-secret",
        None,
        ["-p", "signoff_by", "postgresql://dba:" + FAKE_PASSWORD + "@db/prod"],
        2,
        "signoff_by: looks like it carries a password",
    ),
    ("parameter-missing-value", None, ["-p", "lock_timeout"], 2, "requires 2 arguments"),
    (
        "parameter-given-twice",
        None,
        ["-p", "dry_run", "true", "-p", "dry_run", "false"],
        2,
        "dry_run is given twice",
    ),
    ("parameter-set-by-runner", None, ["-p", "run_id", "x"], 2, "run_id: is set by zdm run itself"),
    ("parameter-spec-twice", None, ["-p", "spec", "other.yaml"], 2, "spec: give it as the SPEC argument"),
    # the environment
    (
        "dsn-variable-unset",
        None,
        ["-p", "dsn_env", "ZDM_NO_SUCH_VARIABLE"],
        2,
        "environment variable ZDM_NO_SUCH_VARIABLE is not set",
    ),
    ("dsn-variable-not-a-name", None, ["-p", "dsn_env", "$(rm -rf /)"], 2, "dsn_env"),
    ("dsn-not-a-dsn", None, ["-p", "dsn_env", "ZDM_GARBAGE_DSN"], 2, "does not hold a connection string"),
    ("unknown-phase", None, ["@deploy"], 2, "'deploy' is not one of"),
    # phases out of order: the gate refuses, exit 3
    ("switch-before-migrate", None, ["@switch"], 3, "gate to switch: closed"),
    ("contract-first", None, ["@contract"], 3, "gate to contract: closed"),
]


@pytest.fixture(scope="module")
def valid_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("specs") / "valid.yaml"
    path.write_text(HEAD + OK_OP)
    return path


@pytest.mark.parametrize(("name", "spec", "args", "status", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_and_changes_nothing(
    orders_env: str,
    tmp_path: Path,
    valid_spec: Path,
    name: str,
    spec: str | None,
    args: list[str],
    status: int,
    fragment: str,
) -> None:
    path = valid_spec
    if spec is not None:
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(spec.encode())
    phase = "expand"
    if args and args[0].startswith("@"):
        phase, args = args[0][1:], args[1:]
    before = fingerprint(orders_env)
    done = zdm(
        "run",
        phase,
        str(path),
        "--archive",
        str(tmp_path / "archive"),
        "--quiet",
        *args,
        env={"ZDM_GARBAGE_DSN": "host=/nowhere password=hunter2 sslmode=bogus junk"},
    )
    assert done.returncode == status, done.stderr[-2000:]
    assert fragment in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert fingerprint(orders_env) == before
    if status == 2:
        assert not (tmp_path / "archive").exists(), "bad input writes nothing"

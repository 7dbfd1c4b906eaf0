"""The analysis' claimed lock modes and rewrites, checked on a real server (18, and 15 where installed).

Each statement runs inside an open transaction; the strongest lock this session then holds on the
relation (``pg_locks``) must be the claimed mode, and the relation's file node must change exactly
when a rewrite is claimed. Then the transaction is rolled back.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from zdm_runbook.lint.analysis import LOCK_MODES, analyze

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE r (id int PRIMARY KEY);
CREATE TABLE t (id int PRIMARY KEY, a int, b text, c varchar(10), d numeric(10, 2), e int NOT NULL DEFAULT 0);
CREATE INDEX t_a_idx ON t (a);
INSERT INTO r VALUES (1);
INSERT INTO t SELECT g, 1, 'x', 'y', 1.5 FROM generate_series(1, 100) g;
ALTER TABLE t ADD CONSTRAINT t_a_positive CHECK (a > 0) NOT VALID;
ALTER TABLE t ADD CONSTRAINT t_a_fk FOREIGN KEY (a) REFERENCES r (id) NOT VALID;
CREATE UNIQUE INDEX t_b_key_idx ON t (id, b);
CREATE POLICY t_p0 ON t USING (true);
CREATE SEQUENCE t_numbers;
"""

# (statement, relation to look at)
CASES = [
    ("ALTER TABLE t ADD COLUMN x int", "t"),
    ("ALTER TABLE t ADD COLUMN x int DEFAULT 42", "t"),
    ("ALTER TABLE t ADD COLUMN x text DEFAULT 'new' NOT NULL", "t"),
    ("ALTER TABLE t ADD COLUMN x timestamptz DEFAULT now()", "t"),
    ("ALTER TABLE t ADD COLUMN x float8 DEFAULT random()", "t"),
    ("ALTER TABLE t ADD COLUMN x bigserial", "t"),
    ("ALTER TABLE t ADD COLUMN x int GENERATED ALWAYS AS IDENTITY", "t"),
    ("ALTER TABLE t ADD COLUMN x int GENERATED ALWAYS AS (a * 2) STORED", "t"),
    ("ALTER TABLE t ALTER COLUMN a SET DEFAULT 7", "t"),
    ("ALTER TABLE t ALTER COLUMN e DROP DEFAULT", "t"),
    ("ALTER TABLE t ALTER COLUMN a SET NOT NULL", "t"),
    ("ALTER TABLE t ALTER COLUMN e DROP NOT NULL", "t"),
    ("ALTER TABLE t ALTER COLUMN a TYPE bigint", "t"),
    ("ALTER TABLE t ALTER COLUMN d TYPE numeric(8, 2)", "t"),
    ("ALTER TABLE t ALTER COLUMN a SET STATISTICS 500", "t"),
    ("ALTER TABLE t ALTER COLUMN a SET (n_distinct = 10)", "t"),
    ("ALTER TABLE t DROP COLUMN b", "t"),
    ("ALTER TABLE t RENAME COLUMN b TO bb", "t"),
    ("ALTER TABLE t RENAME TO t2", "t"),
    ("ALTER TABLE t ADD CONSTRAINT t_e_check CHECK (e >= 0)", "t"),
    ("ALTER TABLE t ADD CONSTRAINT t_e_check CHECK (e >= 0) NOT VALID", "t"),
    ("ALTER TABLE t VALIDATE CONSTRAINT t_a_positive", "t"),
    ("ALTER TABLE t VALIDATE CONSTRAINT t_a_fk", "t"),
    ("ALTER TABLE t ADD CONSTRAINT t_e_fk FOREIGN KEY (e) REFERENCES r (id) NOT VALID", "t"),
    ("ALTER TABLE t ADD CONSTRAINT t_e_fk FOREIGN KEY (e) REFERENCES r (id) NOT VALID", "r"),
    ("ALTER TABLE t ADD CONSTRAINT t_b_key UNIQUE (id, b)", "t"),
    ("ALTER TABLE t ADD CONSTRAINT t_b_key UNIQUE USING INDEX t_b_key_idx", "t"),
    ("ALTER TABLE t DROP CONSTRAINT t_a_positive", "t"),
    ("ALTER TABLE t SET (fillfactor = 80)", "t"),
    ("ALTER TABLE t SET UNLOGGED", "t"),
    ("ALTER TABLE t CLUSTER ON t_a_idx", "t"),
    ("ALTER TABLE t DISABLE TRIGGER ALL", "t"),
    ("CREATE INDEX t_b_idx ON t (b)", "t"),
    ("CREATE UNIQUE INDEX t_id_b_idx ON t (id, b)", "t"),
    ("DROP INDEX t_a_idx", "t_a_idx"),
    ("REINDEX TABLE t", "t"),
    ("CLUSTER t USING t_a_idx", "t"),
    ("TRUNCATE t", "t"),
    ("ANALYZE t", "t"),
    ("LOCK TABLE t IN SHARE ROW EXCLUSIVE MODE", "t"),
    (
        "CREATE TRIGGER t_trg BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        "t",
    ),
    ("UPDATE t SET a = a", "t"),
    ("DELETE FROM t WHERE id = 1", "t"),
    ("COMMENT ON COLUMN t.b IS 'note'", "t"),
    ("COMMENT ON TABLE t IS 'note'", "t"),
    ("ALTER INDEX t_a_idx RENAME TO t_a_idx2", "t_a_idx"),
    ("ALTER TABLE t RENAME CONSTRAINT t_a_positive TO t_a_positive2", "t"),
    ("ALTER TABLE t REPLICA IDENTITY FULL", "t"),
    ("CREATE VIEW t_view AS SELECT id, b FROM t", "t"),
    ("ALTER TABLE t RENAME TO t_renamed", "t"),
    ("CREATE POLICY t_p1 ON t USING (a > 0)", "t"),
    ("ALTER POLICY t_p0 ON t USING (a > 1)", "t"),
    ("DROP POLICY t_p0 ON t", "t"),
    ("DROP TABLE t CASCADE", "t"),
    ("ALTER TABLE t ADD COLUMN x int REFERENCES r (id)", "r"),
    ("ALTER TABLE t ADD COLUMN x int DEFAULT 1 REFERENCES r (id)", "t"),
    ("ALTER TABLE t ADD COLUMN x int DEFAULT 1 REFERENCES r (id)", "r"),
    ("ALTER TABLE t ADD COLUMN x bigint DEFAULT txid_current()", "t"),
]


@pytest.fixture
def schema(any_pg_db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(any_pg_db, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
        yield conn


def _observe(conn: psycopg.Connection[tuple[object, ...]], statement: str, relation: str) -> tuple[str, bool]:
    """Run ``statement`` in a transaction; return the strongest lock held on ``relation`` and
    whether its file node changed (a rewrite; a dropped relation has none). Rolled back afterwards."""
    with conn.transaction(force_rollback=True):
        oid_row = conn.execute("SELECT %s::regclass::oid", [relation]).fetchone()
        assert oid_row is not None
        oid = oid_row[0]
        before = conn.execute("SELECT pg_relation_filenode(%s)", [oid]).fetchone()
        conn.execute(statement)  # type: ignore[arg-type]
        modes = [
            r[0]
            for r in conn.execute(
                "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = %s AND granted", [oid]
            ).fetchall()
        ]
        after = conn.execute("SELECT pg_relation_filenode(%s)", [oid]).fetchone()
    strongest = max(modes, key=LOCK_MODES.index) if modes else "none"
    dropped = after is None or after[0] is None
    return strongest, before != after and not dropped


@pytest.mark.parametrize(("statement", "relation"), CASES, ids=[f"{s} [{r}]" for s, r in CASES])
def test_claimed_lock_and_rewrite_match_the_server(
    schema: psycopg.Connection[tuple[object, ...]], statement: str, relation: str
) -> None:
    version_row = schema.execute("SHOW server_version_num").fetchone()
    assert version_row is not None
    version = int(str(version_row[0])) // 10000
    (claim,) = analyze(statement, version)
    effect = next(e for e in claim.effects if e.relation in (relation, f"public.{relation}"))
    lock, rewritten = _observe(schema, statement, relation)
    assert (effect.lock, effect.work == "rewrite") == (lock, rewritten)


NOT_NULL_NOT_VALID = "ALTER TABLE t ADD CONSTRAINT t_b_nn NOT NULL b NOT VALID"


@pytest.mark.pg(">= 18")
def test_not_null_not_valid_is_catalog_only_from_18(schema: psycopg.Connection[tuple[object, ...]]) -> None:
    (claim,) = analyze(NOT_NULL_NOT_VALID, 18)
    effect = next(e for e in claim.effects if e.relation in ("t", "public.t"))
    assert (effect.lock, effect.work == "rewrite") == _observe(schema, NOT_NULL_NOT_VALID, "t")


@pytest.mark.pg("< 18")
def test_not_null_not_valid_fails_as_written_before_18(
    schema: psycopg.Connection[tuple[object, ...]],
) -> None:
    with pytest.raises(psycopg.errors.SyntaxError):
        _observe(schema, NOT_NULL_NOT_VALID, "t")


def test_alter_sequence_waits_for_a_transaction_that_took_a_number(
    schema: psycopg.Connection[tuple[object, ...]], any_pg_db: str
) -> None:
    """ALTER SEQUENCE takes ShareRowExclusiveLock on the sequence, claimed as such: it waits for an
    open transaction that called nextval() (an INSERT holds RowExclusiveLock on it to its end), so
    without a lock_timeout every INSERT's nextval() queues behind it. Its new file is the sequence's
    one row, not claimed as a rewrite."""
    (claim,) = analyze("ALTER SEQUENCE t_numbers RESTART WITH 100")
    assert [(e.relation, e.lock, e.work) for e in claim.effects] == [
        ("t_numbers", "ShareRowExclusiveLock", "catalog")
    ]
    lock, rewritten = _observe(schema, "ALTER SEQUENCE t_numbers RESTART WITH 100", "t_numbers")
    assert (lock, rewritten) == ("ShareRowExclusiveLock", True)
    with psycopg.connect(any_pg_db) as app:  # a transaction that took a number, still open
        app.execute("SELECT nextval('t_numbers')")
        schema.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            schema.execute("ALTER SEQUENCE t_numbers RESTART WITH 100")


@pytest.mark.parametrize(
    ("domain", "rewrites"),
    [
        ("CREATE DOMAIN d AS int CHECK (VALUE > 0)", True),
        ("CREATE DOMAIN d AS int NOT NULL DEFAULT 1", True),
        ("CREATE DOMAIN d AS int", False),
        ("CREATE TYPE d AS ENUM ('a', 'b')", False),
    ],
)
def test_adding_a_column_of_a_constrained_domain_is_claimed_as_the_rewrite_it_is(
    schema: psycopg.Connection[tuple[object, ...]], domain: str, rewrites: bool
) -> None:
    """Even with no default, PostgreSQL runs a domain's CHECK or NOT NULL on every row's new value:
    the file's own CREATE DOMAIN tells the text analysis so."""
    created, added = analyze(f"{domain}; ALTER TABLE t ADD COLUMN x d")
    assert created.effects == () or created.effects[0].relation != "t"
    assert (added.effects[0].work == "rewrite") is rewrites
    assert added.maybe_domains == ()  # the file made d: known
    schema.execute(domain)  # type: ignore[arg-type]
    assert _observe(schema, "ALTER TABLE t ADD COLUMN x d", "t") == ("AccessExclusiveLock", rewrites)
    (unknown,) = analyze("ALTER TABLE t ADD COLUMN x d")  # made elsewhere: only catalog mode knows
    assert unknown.maybe_domains == ("d",) and unknown.effects[0].work == "catalog"

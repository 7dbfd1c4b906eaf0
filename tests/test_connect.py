"""DSN resolution, application_name, and redaction of passwords from anything printed."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from zdm_runbook.core.connect import connect, describe, find_secrets, redact, resolve_dsn
from zdm_runbook.core.errors import ConfigError, DatabaseError


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://app:s3cr3t@db.example:5432/shop", "s3cr3t"),
        ("postgres://app:p%40ss@db.example/shop?sslmode=require", "p%40ss"),
        ("host=db user=app password=s3cr3t dbname=shop", "s3cr3t"),
        ("host=db password='with space' dbname=shop", "with space"),
        ("postgresql://app@db/shop?password=hunter22&sslmode=require", "hunter22"),
        ('connection failed: password = "quoted secret" rejected', "quoted secret"),
        ("ALTER ROLE app WITH ENCRYPTED PASSWORD 'it''s secret' VALID UNTIL 'x'", "s secret"),
    ],
)
def test_redact_hides_passwords(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


def test_redact_keeps_everything_else() -> None:
    assert redact("postgresql://app:pw@db:5432/shop") == "postgresql://app:***@db:5432/shop"
    assert redact("host=db user=app dbname=shop") == "host=db user=app dbname=shop"


def test_resolved_password_is_redacted_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_DSN", "host=db user=app password=Zq9-unusual dbname=x")
    resolve_dsn(env="MY_DSN")
    assert redact("server said: bad token Zq9-unusual") == "server said: bad token ***"


def test_resolve_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZDM_DSN", "dbname=from_default_env")
    monkeypatch.setenv("OTHER", "dbname=from_other")
    assert resolve_dsn("dbname=explicit") == "dbname=explicit"
    assert resolve_dsn() == "dbname=from_default_env"
    assert resolve_dsn(env="OTHER") == "dbname=from_other"
    monkeypatch.delenv("ZDM_DSN")
    assert resolve_dsn() == ""  # libpq's own environment (PGHOST, PGSERVICE, ...) decides


def test_named_but_unset_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        resolve_dsn(env="NOT_SET_ANYWHERE")
    with pytest.raises(ConfigError, match="not a valid environment variable name"):
        resolve_dsn(env="postgresql://x:y@z/db")


def test_connection_is_tagged_with_application_name(db: str) -> None:
    with connect(db, phase="expand") as conn:
        name = conn.execute("SELECT current_setting('application_name')").fetchone()
    assert name == ("zdm_runbook:expand",)


def test_connection_error_is_redacted(db: str) -> None:
    bad = db.replace("dbname=", "password=TopSecret99 dbname=nonexistent_")
    with pytest.raises(DatabaseError) as info:
        connect(bad)
    assert "TopSecret99" not in str(info.value)
    assert "does not exist" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_describe_names_no_password() -> None:
    text = describe("host=db.internal port=6432 user=app password=pw123 dbname=shop")
    assert text == "app@db.internal:6432/shop"


def test_psycopg_accepts_what_resolve_returns(db: str) -> None:
    with psycopg.connect(resolve_dsn(db)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_find_secrets_names_each_kind_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from zdm_runbook.core.connect import find_secrets  # noqa: PLC0415

    monkeypatch.setenv("SECRET_DSN", "host=db user=app password=Tr0ub4dor&3")
    resolve_dsn(env="SECRET_DSN")
    text = (
        "ok line\n"
        "postgresql://app:s3cr3t@db.example/shop\n"
        "host=db password=hunter2 dbname=x\n"
        "ALTER ROLE app PASSWORD 'opensesame'\n"
        "the value Tr0ub4dor&3 leaked in a log\n"
        "already masked: postgresql://app:***@db.example/shop password=***\n"
    )
    assert find_secrets(text) == [
        (2, "URI password"),
        (3, "password keyword"),
        (4, "SQL PASSWORD literal"),
        (5, "the connection's password"),
    ]
    assert find_secrets(redact(text)) == []


def _secret() -> str:
    """A password no other test prints, made at run time (no credential-shaped literal in the repo)."""
    return "pw-" + secrets.token_hex(8)


def _learned(secret: str) -> bool:
    return redact(f"a cell printed {secret}") == "a cell printed ***" and bool(find_secrets(secret))


def test_a_password_from_pgpassword_is_learned(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _secret()
    monkeypatch.setenv("PGPASSWORD", secret)
    assert secret not in db
    with connect(db):
        pass
    assert _learned(secret)


def test_a_password_from_a_passfile_is_learned(
    db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = _secret()
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:*:{secret}\n")
    passfile.chmod(0o600)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert not _learned(secret)
    with connect(db):  # the trust-auth test server never asks; libpq still reads the file
        pass
    assert _learned(secret)


def test_a_password_from_a_service_file_is_learned(
    db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = _secret()
    params = conninfo_to_dict(db)
    lines = [f"{k}={v}" for k, v in params.items() if k in ("host", "port", "dbname", "user")]
    service = tmp_path / "pg_service.conf"
    service.write_text("[zdmtest]\n" + "\n".join([*lines, f"password={secret}"]) + "\n")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGSERVICEFILE", str(service))
    monkeypatch.setenv("ZDM_DSN", "service=zdmtest")
    with connect() as conn:
        assert conn.info.dbname == params["dbname"]
    assert _learned(secret)

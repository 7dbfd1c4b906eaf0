"""What every ``zdm`` command shares: exit codes, error handling, argument callbacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import psycopg

from zdm_runbook.core.connect import redact
from zdm_runbook.core.durations import parse_duration
from zdm_runbook.core.errors import ExitCode, ZdmError

EXIT_FAILED = ExitCode.FAILED
EXIT_NO_GO = ExitCode.REFUSED
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(redact(message), err=True)
    sys.exit(code)


def handles_errors(fn: F) -> F:
    """Turn zdm-runbook's errors into a redacted message on stderr and the documented exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ZdmError as exc:
            _fail(f"error: {exc}", exc.exit_code)
        except psycopg.Error as exc:  # a server error no module turned into a ZdmError
            _fail(f"error: {str(exc).strip()} [SQLSTATE {exc.sqlstate}]", EXIT_FAILED)
        return None

    return wrapper  # type: ignore[return-value]


def duration_arg(ctx: click.Context, param: click.Parameter, value: str, allow_zero: bool = False) -> float:
    try:
        return parse_duration(value, allow_zero)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


DSN_ENV_HELP = "Environment variable holding the DSN (default ZDM_DSN, else libpq's PG* variables)."

"""The backfill's session takes the settings its dual-write function was installed with.

The dual-write function runs with the settings a conversion may read (``TimeZone``,
``DateStyle``, ``IntervalStyle``, ``search_path``) as they were when expand installed it
(:mod:`zdm_runbook.plan.dual_write`). The backfill and its verification compute the same
expression for the rows the app does not write, so they must compute it the same way: their
session sets each of the function's values before the first batch, whichever machine, role
defaults or ``PGTZ`` it runs with. A function installed by an earlier version, without them, pins
nothing, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from zdm_runbook.core.errors import ConfigError
from zdm_runbook.plan.steps import BackfillSpec

Conn = psycopg.Connection[Any]

_CONFIG = """
SELECT split_part(c, '=', 1), substr(c, length(split_part(c, '=', 1)) + 2)
  FROM pg_proc p, unnest(p.proconfig) c
 WHERE p.oid = to_regproc(format('%%I.%%I', %(schema)s::text, %(name)s::text))
"""


def function_settings(conn: Conn, specs: Iterable[BackfillSpec]) -> dict[str, str]:
    """The settings of the functions ``specs`` are pinned by; two that disagree are an error."""
    found: dict[str, tuple[str, str]] = {}  # name -> (value, the function that says so)
    for spec in specs:
        if spec.pinned_by is None:
            continue
        schema, function = spec.pinned_by
        for name, value in conn.execute(_CONFIG, {"schema": schema, "name": function}).fetchall():
            seen = found.setdefault(str(name), (str(value), function))
            if seen[0] != value:
                raise ConfigError(
                    f"{seen[1]} and {function} were installed with {name} = {seen[0]!r} and {value!r}:"
                    " one backfill pass cannot compute both their ways. Re-run expand for one of them"
                    " from a session with the other's value"
                )
    return {name: value for name, (value, _) in found.items()}


def pin(conn: Conn, specs: Iterable[BackfillSpec]) -> dict[str, str]:
    """Set, for ``conn``'s session, the settings of the functions ``specs`` are pinned by."""
    settings = function_settings(conn, specs)
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, false)", [name, value])
    return settings

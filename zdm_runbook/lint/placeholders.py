"""psycopg's ``%(name)s`` placeholders, as PostgreSQL's ``$n`` for statements to prepare or parse."""

from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"%\((\w+)\)s")
NUMBERED = re.compile(r"\$\d+")  # PostgreSQL's own, as pg_stat_statements shows them


def numbered(text: str) -> str:
    """``text`` with each ``%(name)s`` as ``$n`` (the same name, the same number)."""
    names: dict[str, int] = {}
    return PLACEHOLDER.sub(lambda m: f"${names.setdefault(m[1], len(names) + 1)}", text)

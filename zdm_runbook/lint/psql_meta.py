"""psql's meta-commands in a migration file (``\\set ON_ERROR_STOP on``, ``\\timing``, ``\\gexec``).

Migrations run with ``psql -f`` often carry them, and PostgreSQL's parser rejects the backslash, so
the whole file would read as a parse error. As psql does, a backslash outside a string, a quoted
name, a dollar-quoted body or a comment starts a meta-command that runs to the end of its line.
They are blanked here, lines kept, before the SQL is parsed; ``\\g`` and its kin end the query
before them as ``;`` does. The ones that change what runs are named, so the DBA knows what lint
did not see: ``\\gexec`` (runs each value of the result as a statement), ``\\i``/``\\ir`` (another
file), ``\\c`` (another database) and ``\\if`` (runs a part, or not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
_ENDS_QUERY = re.compile(r"\\g(exec|set|x|desc)?\b")
_UNSEEN = {
    "gexec": "runs each value of the query's result as a statement: those are not linted",
    "i": "includes another file: lint that file too",
    "ir": "includes another file: lint that file too",
    "include": "includes another file: lint that file too",
    "include_relative": "includes another file: lint that file too",
    "c": "connects to another database: lint reads the file as one database's",
    "connect": "connects to another database: lint reads the file as one database's",
    "if": "runs a part of the file or not, by a condition: lint reads every part",
}


@dataclass(frozen=True)
class MetaCommand:
    """One meta-command: its line, its text and, when it changes what runs, how."""

    line: int
    text: str
    unseen: str | None


def strip(text: str) -> tuple[str, list[MetaCommand]]:
    """``text`` with its meta-commands blanked (same length, same lines), and the meta-commands."""
    out = list(text)
    found: list[MetaCommand] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if text.startswith("--", i):
            i = _end_of_line(text, i)
        elif text.startswith("/*", i):
            i = _end_of_block_comment(text, i)
        elif ch == "'":
            escapes = (
                i > 0 and text[i - 1] in "Ee" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            )
            i = _end_of_quoted(text, i, "'", escapes)
        elif ch == '"':
            i = _end_of_quoted(text, i, '"', False)
        elif (
            ch == "$"
            and (tag := _DOLLAR_TAG.match(text, i))
            and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"))
        ):
            close = text.find(tag.group(0), tag.end())
            i = n if close < 0 else close + len(tag.group(0))
        elif ch == "\\":
            end = _end_of_line(text, i)
            command = text[i:end].rstrip()
            word = re.match(r"\\([A-Za-z_]*)", command)
            name = word.group(1) if word else ""
            found.append(MetaCommand(text.count("\n", 0, i) + 1, command, _UNSEEN.get(name)))
            for k in range(i, end):
                out[k] = " "
            if _ENDS_QUERY.match(command):
                out[i] = ";"
            i = end
        else:
            i += 1
    return "".join(out), found


def _end_of_line(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _end_of_block_comment(text: str, i: int) -> int:
    depth, i = 1, i + 2  # PostgreSQL's block comments nest
    while i < len(text) and depth:
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _end_of_quoted(text: str, i: int, quote: str, escapes: bool) -> int:
    i += 1
    while i < len(text):
        if (escapes and text[i] == "\\") or (text[i] == quote and text.startswith(quote * 2, i)):
            i += 2
        elif text[i] == quote:
            return i + 1
        else:
            i += 1
    return i

"""psql's meta-commands in a migration file (``\\set ON_ERROR_STOP on``, ``\\timing``, ``\\gexec``).

Migrations run with ``psql -f`` often carry them, and PostgreSQL's parser rejects the backslash, so
the whole file would read as a parse error. As psql does, a backslash outside a string, a quoted
name, a dollar-quoted body or a comment starts a meta-command that runs to the end of its line.
They are blanked here, lines kept, before the SQL is parsed; ``\\g`` and its kin end the query
before them as ``;`` does. The ones that change what runs are named, so the DBA knows what lint
did not see: ``\\gexec`` (runs each value of the result as a statement), ``\\i``/``\\ir`` (another
file), ``\\c`` (another database) and ``\\if`` (runs a part, or not).

psql's variables are interpolated as psql does (``:name`` as is, ``:'name'`` as a literal,
``:"name"`` as a quoted name), with the values the file's own ``\\set`` gave them. One set only on
the command line (``psql -v schema=app``) is read as its name (``schema``), so that the statement
parses, and named. So is a Flyway or Liquibase placeholder (``${schema}``), which those tools
replace before PostgreSQL sees the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
_ENDS_QUERY = re.compile(r"\\g(exec|set|x|desc)?\b")
_NAME = r"[A-Za-z_\x80-\uffff0-9]+"  # psql's variable_char
_VARIABLE = re.compile(rf":(?:'({_NAME})'|\"({_NAME})\"|({_NAME}))")
_SET = re.compile(rf"\\set\s+({_NAME})\s*(.*)")
_ARG = re.compile(r"'((?:[^']|'')*)'|(\S+)")  # \set's arguments, concatenated as psql does
_PLACEHOLDER = re.compile(r"\$\{([^{}\s]+)\}")
# Where a bare :name can only be a variable: not after a name, a number or a bracket (a[lo:hi]).
_AFTER = re.compile(r"[\w\])\x80-\uffff]")
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


def needed(text: str) -> bool:
    """Whether ``text`` may hold a meta-command, a psql variable or a placeholder."""
    return "\\" in text or "${" in text or re.search(r"(?<!:):(?!:)['\"]?[A-Za-z_]", text) is not None


def strip(text: str) -> tuple[str, list[MetaCommand]]:
    """``text`` with its meta-commands blanked and its variables and placeholders replaced (same
    lines), and the meta-commands (with each variable or placeholder lint could only guess)."""
    out = list(text)
    found: list[MetaCommand] = []
    values: dict[str, str] = {}  # \set's
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == ":" and not text.startswith("::", i) and (i == 0 or text[i - 1] != ":"):
            i = _variable(text, i, out, values, found)
        elif text.startswith("${", i) and (m := _PLACEHOLDER.match(text, i)):
            name = re.sub(r"\W", "_", m[1])
            out[i : m.end()] = [name] + [""] * (m.end() - i - 1)
            why = f"is a placeholder its migration tool fills in: read as the name {name}"
            found.append(MetaCommand(text.count("\n", 0, i) + 1, m[0], why))
            i = m.end()
        elif text.startswith("--", i):
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
            if name == "set" and (setting := _SET.match(command)):
                values[setting[1]] = "".join(
                    a[2] if a[1] is None else a[1].replace("''", "'") for a in _ARG.finditer(setting[2])
                )
            for k in range(i, end):
                out[k] = " "
            if _ENDS_QUERY.match(command):
                out[i] = ";"
            i = end
        else:
            i += 1
    return "".join(out), found


def _variable(text: str, i: int, out: list[str], values: dict[str, str], found: list[MetaCommand]) -> int:
    """At ``:`` (``text[i]``): a psql variable, replaced in ``out``; the index after it."""
    m = _VARIABLE.match(text, i)
    if m is None:
        return i + 1
    literal, quoted, bare = m[1], m[2], m[3]
    name = literal or quoted or bare
    if name in values:
        value = values[name]
    elif bare and (name.isdigit() or (i > 0 and _AFTER.match(text[i - 1]))):
        return m.end()  # psql leaves an unset one alone; here it is SQL's own (a slice, a label)
    else:
        value = name
    if literal:
        value = "'" + value.replace("'", "''") + "'"
    elif quoted:
        value = '"' + value.replace('"', '""') + '"'
    if name not in values:
        why = f"is not set in the file (psql -v {name}=… sets it): read as {value}"
        found.append(MetaCommand(text.count("\n", 0, i) + 1, m[0], why))
    out[i : m.end()] = [value] + [""] * (m.end() - i - 1)
    return m.end()


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

"""How tables and statements look in a notebook: readable by a DBA, and the same in the archived HTML.

pandas' own HTML is made for data, not for a lock report: it shows a meaningless index column,
cuts long text at 50 characters, prints floats with six decimals and ``NaN`` for "none", and
JupyterLab typesets anything between two ``$`` as LaTeX (``$1 … $2`` in a query). Here every
value is formatted for a person (seconds rounded, lists joined, missing values blank), queries and
the blocking tree are shown in full as code, and every block is marked so MathJax leaves it alone.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from zdm_runbook.core.connect import redact
from zdm_runbook.core.display import show_html
from zdm_runbook.core.durations import human_seconds
from zdm_runbook.execute.attempts import StepResult
from zdm_runbook.execute.progress import State
from zdm_runbook.inspect import usage
from zdm_runbook.lint.analysis import step_locks
from zdm_runbook.plan.steps import Step

# MathJax 2 and 3 skip elements with these classes: no ``$1 … $2`` typeset as maths.
NO_MATH = "tex2jax_ignore mathjax_ignore"
# Columns shown as code, whole and with their line breaks and indentation.
CODE_COLUMNS = frozenset({"query", "tree", "statement"})
_CELL = "text-align:left;vertical-align:top;padding:2px 8px"


def cell_text(column: str, value: Any) -> str:
    """One value as a DBA reads it: blank for none, seconds for ``*_s`` columns, lists joined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return human_seconds(value) if column.endswith("_s") else f"{value:,.3g}"
    if isinstance(value, pd.Timestamp):
        return f"{value:%Y-%m-%d %H:%M:%S %Z}".strip()
    return str(value)


# The blocking tree's bookkeeping: its indentation already says depth and root.
HIDDEN = frozenset({"depth", "root"})
# Headings as a DBA says them; other columns lose their underscores.
HEADINGS = {"xact_age_s": "transaction age", "state_age_s": "in this state for", "wait_s": "waiting for"}
# The tree keeps its lines whole (its indentation is the tree); a query wraps between words.
_WRAP = {"tree": "white-space:pre", "query": "white-space:pre-wrap;word-break:normal;min-width:30ch"}


def heading(column: str) -> str:
    return HEADINGS.get(column, column.replace("_", " "))


def _cell(column: str, value: Any) -> str:
    text = html.escape(redact(cell_text(column, value)))
    if column in CODE_COLUMNS and text:
        wrap = _WRAP.get(column, "white-space:pre-wrap;word-break:normal")
        return f"<td style='{_CELL}'><pre style='margin:0;{wrap}'>{text}</pre></td>"
    return f"<td style='{_CELL}'>{text}</td>"


def frame_html(table: pd.DataFrame) -> str:
    """``table`` as an HTML table without the index or :data:`HIDDEN` columns, every value
    formatted by :func:`cell_text`."""
    columns = [c for c in table.columns if c not in HIDDEN]
    head = "".join(f"<th style='{_CELL}'>{html.escape(heading(str(c)))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_cell(str(c), row[c]) for c in columns) + "</tr>" for _, row in table.iterrows()
    )
    return f"<table class='{NO_MATH}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts_html(facts: Mapping[str, Any]) -> str:
    """A two-column table of ``{name: value}``."""
    rows = "".join(
        f"<tr><th style='{_CELL}'>{html.escape(str(k))}</th>"
        f"<td style='{_CELL}'>{html.escape(redact(str(v)))}</td></tr>"
        for k, v in facts.items()
    )
    return f"<table class='{NO_MATH}'>{rows}</table>"


def show_section(title: str, table: pd.DataFrame, empty: str = "none") -> None:
    """A heading, then the table, or the word ``empty`` (plain text, not a quoted string)."""
    body = frame_html(table) if len(table) else f"<p><em>{html.escape(empty)}</em></p>"
    show_html(f"<h4>{html.escape(title)}</h4>{body}")


def code_html(text: str) -> str:
    """SQL (or any text) as a block of code, whole, never typeset."""
    style = "white-space:pre-wrap;word-break:normal"
    return f"<pre class='{NO_MATH}' style='{style}'>{html.escape(redact(text))}</pre>"


def usage_html(seen: usage.Usage) -> str:
    """The contract gate's evidence: the application's statements in full, as code, with their calls;
    zdm-runbook's own (tagged) statements counted, not listed."""
    parts = []
    for s in seen.app:
        calls = f"{s['calls_in_window']:,} call(s) in the window, " if seen.window_s > 0 else ""
        parts.append(
            f"<p>{calls}{s['calls_total']:,} since the statistics were reset; uses"
            f" {html.escape(', '.join(s['uses']))}:</p>" + code_html(s["query"])
        )
    if not parts:
        parts.append("<p><em>none recorded</em></p>")
    if seen.ours:
        parts.append(f"<p>({seen.ours} of zdm-runbook's own statements, tagged, not shown)</p>")
    return "\n".join(parts)


def plan_html(steps: Iterable[Step]) -> str:
    """Each step: what it does, its key, how it runs, what it locks, and its SQL."""
    parts = []
    for n, step in enumerate(steps, 1):
        mode = (
            "one short transaction per batch, resumable from the last committed batch"
            if step.backfill is not None
            else "in one transaction"
            if step.transactional
            else "outside a transaction (autocommit)"
        )
        parts.append(
            f"<h4>{n}. {html.escape(step.description)}</h4>"
            f"<p><code>{html.escape(step.key)}</code>, {mode}; {html.escape(step_locks(step))}</p>"
            f"{code_html(step.render())}"
        )
    return "\n".join(parts)


def outcomes_frame(results: Iterable[StepResult]) -> pd.DataFrame:
    """One row per step: outcome, attempts, time waited for locks, last error."""
    rows = [
        {
            "step": r.key,
            "outcome": r.outcome,
            "attempts": len(r.attempts),
            "lock wait (s)": round(sum(a.lock_wait_s for a in r.attempts), 3),
            "seconds": round(sum(a.seconds for a in r.attempts), 3),
            "last error": _last_error(r),
        }
        for r in results
    ]
    return pd.DataFrame(
        rows, columns=["step", "outcome", "attempts", "lock wait (s)", "seconds", "last error"]
    )


def _last_error(result: StepResult) -> str:
    if not result.attempts or result.outcome == "applied":
        return ""
    last = result.attempts[-1]
    return redact(f"{last.sqlstate or ''} {last.message or ''}".strip())[:200]


def backfilled(fills: Iterable[State]) -> list[str]:
    """What a phase backfilled, per table: two backfill steps of one 200,000-row table (two
    columns) are 200,000 rows, not 400,000."""
    steps: dict[str, list[State]] = {}
    for state in fills:
        steps.setdefault(state.table, []).append(state)
    return [
        f"{table} backfilled ({max(s.rows_scanned for s in states):,} rows"
        + (f", {len(states)} backfill steps)" if len(states) > 1 else ")")
        for table, states in steps.items()
    ]

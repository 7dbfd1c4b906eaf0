"""What the DBA notebooks in ``notebooks/`` show: a lock inspector and an overview of the ledger.

Both are read-only. The lock inspector shows the views of ``zdm locks`` (the blocking tree with
each session's query, waiting and long-running sessions, and for given tables their locks and the
preflight verdict), refreshed on demand by a button in JupyterLab or by re-running the cell. The
overview lists every change in the ledger with its phases, sign-offs and runs, and draws each
backfill's chart from its committed batches.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .charts import backfill_figure, show
from .cli_common import ledger_ready
from .connect import connect, describe, resolve_dsn
from .guard import parse_duration
from .preflight import snapshot
from .progress import display
from .runbook import show_html

VIEWS = (
    ("blocking_tree", "Blocking tree: who blocks whom (roots first)"),
    ("waiting", "Sessions waiting for a lock"),
    ("table_locks", "Locks held and queued on the tables"),
    ("long_running", "Long-running and idle-in-transaction sessions"),
    ("autovacuum", "Vacuum in progress"),
    ("replication", "Replicas and their lag"),
)


class LockInspector:
    """The live lock views of one database; :meth:`refresh` re-reads and re-draws them."""

    def __init__(self, dsn_env: str = "ZDM_DSN", tables: str = "", long_after: str = "30s") -> None:
        self.conninfo = resolve_dsn(env=dsn_env)
        self.tables = [t.strip() for t in tables.split(",") if t.strip()]
        self.long_after_s = parse_duration(long_after)
        self._out: Any = None

    def render(self) -> None:
        """Print and display every view once, as of now."""
        with connect(self.conninfo, phase="inspector", autocommit=True) as conn:
            snap = snapshot(conn, self.tables, long_after_s=self.long_after_s)
        print(f"{snap['version']} at {describe(self.conninfo)}, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        if snap.get("verdict") is not None:
            print(snap["verdict"])
        for key, title in VIEWS:
            view = snap.get(key)
            if isinstance(view, pd.DataFrame):
                show_html(f"<h4>{html.escape(title)}</h4>")
                display(view if len(view) else "none")

    def refresh(self, interactive: bool = False) -> None:
        """Render now; ``interactive`` adds a Refresh button that re-renders in place."""
        if not interactive:
            self.render()
            return
        import ipywidgets as widgets  # noqa: PLC0415 - only in JupyterLab

        self._out = widgets.Output()
        button = widgets.Button(description="Refresh", icon="refresh")

        def again(_: Any = None) -> None:
            with self._out:
                self._out.clear_output(wait=True)
                self.render()

        button.on_click(again)
        display(widgets.VBox([button, self._out]))
        again()


def overview(dsn_env: str = "ZDM_DSN") -> pd.DataFrame:
    """Every change in the ledger, one row per phase: steps done, last run, sign-off."""
    with connect(env=dsn_env, autocommit=True) as conn:
        if not ledger_ready(conn):
            print("no change has run in this database yet: it has no ledger (schema zdm)")
            return pd.DataFrame()
        rows = conn.execute(
            "SELECT c.change_id, p.phase, jsonb_array_length(coalesce(c.steps -> p.phase, '[]')),"
            " r.outcome, r.started_at, r.notebook_path, s.by_name, s.signed_at"
            " FROM zdm.changes c CROSS JOIN unnest(ARRAY['expand', 'migrate', 'switch', 'contract'])"
            "   WITH ORDINALITY p(phase, n)"
            " LEFT JOIN LATERAL (SELECT outcome, started_at, notebook_path FROM zdm.phase_runs"
            "   WHERE change_id = c.change_id AND phase = p.phase ORDER BY started_at DESC LIMIT 1) r ON true"
            " LEFT JOIN LATERAL (SELECT by_name, signed_at FROM zdm.signoffs"
            "   WHERE change_id = c.change_id AND phase = p.phase ORDER BY signoff_id DESC LIMIT 1) s ON true"
            " ORDER BY c.change_id, p.n"
        ).fetchall()
    columns = [
        "change",
        "phase",
        "steps",
        "last run",
        "started",
        "notebook",
        "signed off by",
        "signed off at",
    ]
    table = pd.DataFrame(rows, columns=columns)
    # The file name says phase and time; `zdm status` prints the whole path.
    table["notebook"] = table["notebook"].map(lambda p: Path(p).name if isinstance(p, str) else "")
    for column in ("started", "signed off at"):
        table[column] = table[column].map(lambda t: f"{t:%Y-%m-%d %H:%M:%S %Z}" if pd.notna(t) else "")
    return table.fillna("").set_index(["change", "phase"])


def backfill_charts(dsn_env: str = "ZDM_DSN") -> int:
    """Draw the chart of every backfill in the ledger from its committed batches; return how many."""
    with connect(env=dsn_env, autocommit=True) as conn:
        if not ledger_ready(conn):
            return 0
        batches = conn.execute(
            "SELECT b.change_id, b.step_key, f.table_name, b.batch,"
            " extract(epoch FROM b.committed_at - min(b.committed_at) OVER w)::float8,"
            " b.rows_scanned, b.rows_updated, b.batch_size, b.seconds, b.retries, b.throttled_s,"
            " sum(b.rows_scanned) OVER (w ORDER BY b.batch)"
            " FROM zdm.backfill_batches b JOIN zdm.backfills f USING (change_id, step_key)"
            " WINDOW w AS (PARTITION BY b.change_id, b.step_key) ORDER BY 1, 2, 4"
        ).fetchall()
    names = ["change", "step", "table", "batch", "at_s", "rows_scanned", "rows_updated", "batch_size"]
    frame = pd.DataFrame(batches, columns=[*names, "seconds", "retries", "throttled_s", "rows_done"])
    count = 0
    for (change, step, table), part in frame.groupby(["change", "step", "table"], sort=True):
        show(backfill_figure(part, f"{change} {step}: {table}"), alt=f"backfill chart of {change} {step}")
        count += 1
    if not count:
        print("no backfill has committed a batch in this database")
    return count

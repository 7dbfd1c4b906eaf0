"""What the DBA notebooks in ``notebooks/`` show: a lock inspector and an overview of the ledger.

Both are read-only. The lock inspector shows the views of ``zdm locks`` (the blocking tree with
each session's query, waiting and long-running sessions, and for given tables their locks and the
preflight verdict), refreshed on demand by a button in JupyterLab or by re-running the cell. The
overview lists every change in the ledger with its phases, sign-offs and runs, and draws each
backfill's chart from its committed batches.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from zdm_runbook.core.connect import connect, describe, resolve_dsn
from zdm_runbook.core.display import display
from zdm_runbook.core.durations import parse_duration
from zdm_runbook.inspect.preflight import snapshot
from zdm_runbook.ledger import status
from zdm_runbook.ledger.status import ledger_ready
from zdm_runbook.notebook.charts import backfill_figure, show
from zdm_runbook.notebook.views import show_section

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
                show_section(title, view)

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
        table = status.overview(conn)
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
        frame = status.batches(conn)
    count = 0
    for (change, step, table), part in frame.groupby(["change", "step", "table"], sort=True):
        title = f"backfill {step} of {table} ({change})"  # as the runbook titles it
        show(backfill_figure(part, title), alt=f"chart of the {title}")
        count += 1
    if not count:
        print("no backfill has committed a batch in this database")
    return count

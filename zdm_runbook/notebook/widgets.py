"""The live backfill view in JupyterLab: an ipywidgets bar and label, and the chart of batches so far.

Headless runs never see widget updates, so :func:`zdm_runbook.execute.progress.reporter` picks
a log line there; this widget is what the interactive runbook hands the engine instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from zdm_runbook.core.display import display
from zdm_runbook.execute.progress import LogProgress, State, frame, line
from zdm_runbook.notebook.charts import backfill_figure, show


class WidgetProgress:
    """Interactive: an ipywidgets progress bar with a label, and a chart redrawn every ``chart_every`` s."""

    def __init__(self, chart_every: float = 3.0) -> None:
        import ipywidgets as widgets  # noqa: PLC0415 - only in a notebook

        self.bar = widgets.FloatProgress(min=0.0, max=1.0, description="backfill")
        self.label = widgets.HTML()
        self.chart = widgets.Output()
        self.chart_every, self._last = chart_every, 0.0
        display(widgets.VBox([widgets.HBox([self.bar, self.label]), self.chart]))

    def __call__(self, state: State) -> None:
        total = state.rows_estimate or max(state.rows_scanned, 1)
        self.bar.value = min(1.0, state.rows_scanned / total)
        self.label.value = line(state)
        now = time.monotonic()
        if state.finished is not None or now - self._last >= self.chart_every:
            self._last = now
            self._redraw(state)

    def _redraw(self, state: State) -> None:
        with self.chart:
            self.chart.clear_output(wait=True)
            show(backfill_figure(frame(state), state.table), alt=f"backfill of {state.table} so far")


def reporter(interactive: bool, every: float = 5.0) -> Callable[[State], Any]:
    """The progress display for a run: a widget when ``interactive``, else a log line."""
    return WidgetProgress() if interactive else LogProgress(every)

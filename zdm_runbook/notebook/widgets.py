"""The live backfill view in JupyterLab: a bar, a line of text and the chart of the batches so far.

The engine calls the view after every batch, but the view never draws there: it only keeps the
latest :class:`~zdm_runbook.execute.progress.State`. A ticker thread redraws the bar and the line
a few times a second (``every``), whatever the engine is doing (a batch, a pause to share the
server, a hold for a lock queue or replica lag), and says which; it redraws the chart only when
batches were added, at most every ``chart_every`` seconds and never more often than five times
its own drawing time (so drawing takes at most a fifth of a core). A fast backfill costs a few
widget messages a second, not one per batch (measured: ``bench/notebook_progress.py``), and a
slow one still shows it is alive.

One view per backfill step. When the step ends the view is closed: the final line stays, the live
chart is removed, and the runbook shows the final chart as an ordinary output, which the saved
notebook and its HTML keep (widget state is not saved with a notebook).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from zdm_runbook.core.display import display
from zdm_runbook.execute.progress import LogProgress, State, activity, frame, line
from zdm_runbook.notebook.charts import backfill_figure, png

log = logging.getLogger(__name__)


class WidgetProgress:
    """Interactive: a bar, a line and a live chart for one backfill, refreshed by a ticker thread."""

    def __init__(self, title: str, every: float = 0.25, chart_every: float = 2.0) -> None:
        import ipywidgets as widgets  # noqa: PLC0415 - only in a notebook

        self.every, self.chart_every = every, chart_every
        self.bar = widgets.FloatProgress(
            min=0.0,
            max=1.0,
            description=title,
            style={"description_width": "initial"},
            layout=widgets.Layout(width="50em"),
        )
        self.label = widgets.HTML(value="starting: reading the checkpoint and the key range")
        self.chart = widgets.Image(format="png", layout=widgets.Layout(display="none", width="800px"))
        self.caption = widgets.HTML()  # which batch the chart is as of: it lags the line by seconds
        parts = ((self.bar, "bar"), (self.label, "line"), (self.chart, "chart"), (self.caption, "caption"))
        for widget, name in parts:
            widget.add_class(f"zdm-progress-{name}")
        self.box = widgets.VBox([self.bar, self.label, self.chart, self.caption])
        self.state: State | None = None
        self._charted, self._chart_at, self._chart_cost = 0, 0.0, 0.0
        self._stop = threading.Event()
        display(self.box)
        self._ticker = threading.Thread(target=self._tick, name=f"zdm-progress-{title}", daemon=True)
        self._ticker.start()

    def __call__(self, state: State) -> None:
        """The engine's callback: remember the state; the ticker draws it."""
        self.state = state

    def _set(self, widget: Any, name: str, value: Any) -> None:
        """Send a value only when it changed: a widget message costs the kernel and the browser."""
        if getattr(widget, name) != value:
            setattr(widget, name, value)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.draw()
            except Exception:  # a drawing problem must never stop the backfill
                log.debug("progress view: drawing failed", exc_info=True)

    def draw(self, final: bool = False) -> None:
        """Bar and line now; the chart when batches were added and it is time (or ``final``)."""
        state = self.state
        if state is None:
            return
        total = state.rows_estimate or max(state.rows_scanned, 1)
        self._set(self.bar, "value", min(1.0, state.rows_scanned / total))
        self._set(self.label, "value", f"{line(state)} &mdash; <b>{activity(state)}</b>")
        batches = len(state.batches)
        now = time.monotonic()
        due = now - self._chart_at >= max(self.chart_every, 5 * self._chart_cost)
        if not final and batches >= 2 and batches != self._charted and due:
            self._charted = batches
            figure = backfill_figure(frame(state), f"{state.title}, {batches:,} batches so far", live=True)
            image = png(figure, dpi=72)
            self._chart_cost, self._chart_at = time.monotonic() - now, time.monotonic()
            self._set(self.chart, "value", image)
            self._set(self.chart.layout, "display", "block")
            self._set(self.caption, "value", f"chart as of batch {batches:,} ({state.rows_scanned:,} rows)")

    def close(self) -> None:
        """Stop the ticker, draw the last line and bar, and remove the live chart."""
        self._stop.set()
        self._ticker.join(timeout=5)
        self.draw(final=True)
        self._set(self.chart.layout, "display", "none")
        self.chart.value = b""
        self.caption.value = ""


class LogLines(LogProgress):
    """Headless: :class:`LogProgress`, with the same ``close`` as the widget."""

    def close(self) -> None:
        """Nothing to clear: the last line was printed when the backfill finished."""


def progress_view(interactive: bool, title: str, log_every: float = 5.0) -> WidgetProgress | LogLines:
    """The progress display for one backfill: a live widget when ``interactive``, else log lines."""
    return WidgetProgress(title) if interactive else LogLines(log_every)

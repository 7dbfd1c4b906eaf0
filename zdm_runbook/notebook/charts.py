"""Charts as matplotlib figures, shown as PNG so an archived notebook and its HTML keep them.

Figures are built with :class:`matplotlib.figure.Figure` directly, not pyplot: no backend is
chosen and no global figure state is touched, in a notebook kernel or anywhere else.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from zdm_runbook.core.display import display


def backfill_figure(batches: pd.DataFrame, title: str, live: bool = False) -> Figure:
    """Four panels over time: rows done, rows/s, batch duration, batch size; the stretches the
    engine held (``throttled_s``: a vacuum of the table, replica lag, the WAL cap, a lock queue, a
    pause) shaded on each.

    The rate is rows per second of wall time, in bins of about a hundredth of the run (at least
    0.2 s), so a hold reads as the rate falling to zero rather than as a line drawn across it; the
    rate within each batch is what the duration panel shows.

    ``live``: the chart redrawn while a backfill runs, with fixed margins instead of
    ``tight_layout`` (which draws the figure once more to measure it): half the drawing time."""
    fig = Figure(figsize=(10, 6))
    axes = fig.subplots(2, 2, sharex=True)
    (done, rate), (duration, size) = axes
    t = batches["at_s"]
    done.plot(t, batches["rows_done"], color="tab:blue")
    done.set_ylabel("rows done")
    edges, per_second = wall_rate(batches)
    rate.stairs(per_second, edges, color="tab:green", fill=True, alpha=0.8)
    rate.set_ylabel("rows/s")
    duration.plot(t, batches["seconds"] * 1000, color="tab:orange", linewidth=0.8)
    duration.set_ylabel("batch duration (ms)")
    size.step(t, batches["batch_size"], where="post", color="tab:purple")
    size.set_ylabel("batch size (rows)")
    for ax in (duration, size):
        ax.set_xlabel("seconds since start")
    holds = held_spans(batches)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        for n, (start, end) in enumerate(holds):
            ax.axvspan(start, end, color="0.6", alpha=0.3, linewidth=0, label="held" if n == 0 else None)
    if holds:
        done.legend(loc="upper left", frameon=False)
    for ax in (done, rate, size):
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    fig.suptitle(title)
    if live:
        fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.09, wspace=0.28, hspace=0.12)
    else:
        fig.tight_layout()
    return fig


def wall_rate(batches: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Rows scanned per second of wall time: bin edges and each bin's rate (bins with no batch
    committed read 0). Bins are a hundredth of the run, at least 0.2 s; the last ends with the
    last batch (joined to the one before when shorter than half a bin), so the run's end reads
    neither low nor as a spike."""
    if batches.empty:
        return [0.0, 1.0], [0.0]
    end = float(batches["at_s"].max())
    width = max(0.2, end / 100)
    edges = [i * width for i in range(int(end // width) + 1)] + [end]
    if len(edges) > 2 and end - edges[-2] < width / 2:
        del edges[-2]
    if edges[-1] <= edges[-2]:  # a single batch, or the run ends on a bin's edge
        edges[-1] = edges[-2] + width
    rows = [0.0] * (len(edges) - 1)
    for at, scanned in zip(batches["at_s"], batches["rows_scanned"], strict=True):
        rows[min(len(rows) - 1, max(0, bisect.bisect_right(edges, float(at)) - 1))] += float(scanned)
    return edges, [r / (hi - lo) for r, lo, hi in zip(rows, edges, edges[1:], strict=False)]


def held_spans(batches: pd.DataFrame) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of each stretch the engine held: the ``throttled_s`` recorded with
    a batch ended when that batch began."""
    spans = []
    for at, seconds, held in zip(batches["at_s"], batches["seconds"], batches["throttled_s"], strict=True):
        if held and held > 0:
            began = float(at) - float(seconds)
            spans.append((max(0.0, began - float(held)), began))
    return spans


def png(fig: Figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show(fig: Figure, alt: str = "backfill progress chart") -> Any:
    """Display the figure as a PNG image in a notebook (kept by the archived HTML); return it."""
    from IPython.display import Image  # noqa: PLC0415 - only in a notebook

    make_image: Callable[..., Any] = Image
    image = make_image(data=png(fig), format="png", alt=alt)
    display(image)
    return image

"""Charts as matplotlib figures, shown as PNG so an archived notebook and its HTML keep them.

Figures are built with :class:`matplotlib.figure.Figure` directly, not pyplot: no backend is
chosen and no global figure state is touched, in a notebook kernel or anywhere else.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from zdm_runbook.core.display import display


def backfill_figure(batches: pd.DataFrame, title: str, live: bool = False) -> Figure:
    """Four panels over time: rows done, rate (rows/s), batch duration, batch size.

    ``live``: the chart redrawn while a backfill runs, with fixed margins instead of
    ``tight_layout`` (which draws the figure once more to measure it): half the drawing time."""
    fig = Figure(figsize=(10, 6))
    axes = fig.subplots(2, 2, sharex=True)
    (done, rate), (duration, size) = axes
    t = batches["at_s"]
    done.plot(t, batches["rows_done"], color="tab:blue")
    done.set_ylabel("rows done")
    seconds = batches["seconds"].where(batches["seconds"] > 0)
    rate.plot(t, batches["rows_scanned"] / seconds, color="tab:green", linewidth=0.8)
    rate.set_ylabel("rows/s (per batch)")
    duration.plot(t, batches["seconds"] * 1000, color="tab:orange", linewidth=0.8)
    duration.set_ylabel("batch duration (ms)")
    size.step(t, batches["batch_size"], where="post", color="tab:purple")
    size.set_ylabel("batch size (rows)")
    for ax in (duration, size):
        ax.set_xlabel("seconds since start")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(f"backfill of {title}")
    if live:
        fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.09, wspace=0.28, hspace=0.12)
    else:
        fig.tight_layout()
    return fig


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

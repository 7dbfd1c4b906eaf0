"""Showing a thing to a person: rich output in a notebook, plain text anywhere else.

A leaf: the progress views, charts, dashboards and the runbook all display through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def display(obj: Any) -> None:
    """Show ``obj`` in the notebook (HTML tables, images, widgets); print it elsewhere."""
    try:
        from IPython.display import display as ipy_display  # noqa: PLC0415 - only in a notebook
    except ImportError:  # pragma: no cover - IPython comes with jupyter
        print(obj)
        return
    ipy_display(obj)  # type: ignore[no-untyped-call]


def show_html(markup: str) -> None:
    from IPython.display import HTML  # noqa: PLC0415

    make: Callable[..., Any] = HTML
    display(make(markup))

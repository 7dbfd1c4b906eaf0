"""The sign-off form an interactive run ends with: who approves, a ticket, notes, and one button.

One message is shown at a time (a refusal is replaced by the next attempt's result, never left
above it); an empty name is refused in the form, in the form's words; after approval every field
and the button are disabled, so what the ledger holds is what the form shows. Recording is the
runbook's (:meth:`zdm_runbook.notebook.runbook.Runbook.record_sign_off`): it may refuse, for
example while the notebook's saved file predates the run, and the form shows why.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zdm_runbook.core.display import display
from zdm_runbook.core.errors import ZdmError
from zdm_runbook.ledger.signoffs import SignOff

log = logging.getLogger(__name__)
Record = Callable[[str, str, str], SignOff]
_REFUSED = "<p style='color:#b3261e'><b>not signed off:</b> {}</p>"


class SignOffForm:
    """Name, ticket and notes, and Approve; ``note`` (HTML) says what approving records."""

    def __init__(
        self, record: Record, *, name: str = "", ticket: str = "", notes: str = "", note: str = ""
    ) -> None:
        import ipywidgets as widgets  # noqa: PLC0415 - only in JupyterLab

        self.record = record

        def field(kind: Any, value: str, description: str, placeholder: str) -> Any:
            return kind(
                value=value,
                description=description,
                placeholder=placeholder,
                style={"description_width": "6em"},
                layout=widgets.Layout(width="40em"),
            )

        self.name = field(widgets.Text, name, "your name", "who approves")
        self.ticket = field(widgets.Text, ticket, "ticket", "change ticket (optional)")
        self.notes = field(widgets.Textarea, notes, "notes", "what you checked (optional)")
        self.button = widgets.Button(
            description="Approve and sign off",
            button_style="success",
            icon="check",
            layout=widgets.Layout(width="fit-content", margin="4px 0 0 6.5em"),
        )
        self.message = widgets.HTML()
        self.button.on_click(self.approve)
        parts = [widgets.HTML(note)] if note else []
        self.box = widgets.VBox([*parts, self.name, self.ticket, self.notes, self.button, self.message])
        self.signed: SignOff | None = None

    @property
    def fields(self) -> list[Any]:
        return [self.name, self.ticket, self.notes]

    def show(self) -> None:
        display(self.box)

    def approve(self, _: Any = None) -> None:
        """Record the sign-off, or say in the form why not; on success lock the form."""
        self.message.value = ""
        who = self.name.value.strip()
        if not who:
            self.message.value = _REFUSED.format("enter your name: a sign-off records who approved.")
            return
        try:
            self.signed = self.record(who, self.ticket.value.strip(), self.notes.value.strip())
        except ZdmError as exc:
            self.message.value = _REFUSED.format(html.escape(str(exc)))
            return
        except Exception as exc:  # the ledger unreachable, say: shown, not lost in a log
            log.exception("sign-off failed")
            self.message.value = _REFUSED.format(html.escape(f"{type(exc).__name__}: {exc}"))
            return
        for widget in [*self.fields, self.button]:
            widget.disabled = True
        self.button.description = "Signed off"
        self.button.icon = "lock"
        at = f"{self.signed.at:%Y-%m-%d %H:%M:%S %Z}"
        self.message.value = (
            f"<p style='color:#1b5e20'><b>signed off</b> by {html.escape(self.signed.by)} at {at}</p>"
        )


def form_note(notebook: Path | None) -> str:
    """What approving records, above the form's fields."""
    if notebook is None:
        return "<p>This kernel does not know its notebook's file: the sign-off records no notebook hash.</p>"
    return (
        f"<p>Approving records who, the ticket and notes, and this notebook"
        f" (<code>{html.escape(notebook.name)}</code>) with the SHA-256 of the file as saved:"
        f" <b>save the notebook first</b> (Ctrl+S) so that it holds this run's outputs.</p>"
    )

"""What every phase notebook imports: ``from zdm_runbook import runbook; rb = runbook.start(...)``.

This name is a promise: templates and every archived notebook import it, so it stays importable
for as long as those notebooks may be re-opened. The code lives in :mod:`zdm_runbook.notebook.runbook`.
"""

from zdm_runbook.inspect.preflight import PreflightRefused
from zdm_runbook.notebook.runbook import Runbook, start

__all__ = ["PreflightRefused", "Runbook", "start"]

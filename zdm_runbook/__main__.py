"""``python -m zdm_runbook`` is the ``zdm`` command."""

from .cli import main

main()

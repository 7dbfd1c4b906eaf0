"""``python -m zdm_runbook`` is the ``zdm`` command."""

from zdm_runbook.cli.main import main

main()

"""Face: the ``zdm`` command (plan, run, prepare, status, locks, backfill, signoff, lint, db, demo).

May import every layer below it; nothing imports it. ``main`` is the console entry point.
"""

from zdm_runbook.cli.main import main

__all__ = ["main"]

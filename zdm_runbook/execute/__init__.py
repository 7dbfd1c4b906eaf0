"""Running: guarded execution of a plan against a live server (guard settings, the executor, phase
sessions, the backfill engine, keysets, verification, progress, compat checks).
May import ``inspect``, ``ledger``, the model packages and ``core``.
"""

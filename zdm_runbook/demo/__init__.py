"""Face: ``zdm demo`` and its parts (a local embedded PostgreSQL, simulated app traffic, pgbench).
May import ``notebook`` and every layer below it.
"""

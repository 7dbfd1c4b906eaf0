"""Running, read-only: what the live server is doing (lock views, blockers of one session, the
go / no-go preflight, usage evidence from pg_stat_statements). May import the model and ``core``.
"""

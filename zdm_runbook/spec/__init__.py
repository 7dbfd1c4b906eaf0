"""Model: a change spec read into typed data (phases, tables, operations, pglast-checked SQL text,
compat statements) and checked against a live catalog. May import ``zdm_runbook.core`` only.
"""

"""Core: the one exception hierarchy, connections and secrets, durations, and display.

Leaves every other layer builds on; imports nothing of zdm_runbook outside this package.
"""

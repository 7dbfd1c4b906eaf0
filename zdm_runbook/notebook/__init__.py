"""Face: what the phase notebooks run (the runbook object, parameters, templates, widgets, charts,
the DBA dashboards) and the papermill runner that archives them. May import every layer below.
"""

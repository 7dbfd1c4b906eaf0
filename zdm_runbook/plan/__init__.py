"""Model: a change's operations turned into steps, each in one phase, each its SQL as data
(steps, the planner's one dispatch per operation, recipes). May import ``spec`` and ``core``.
"""

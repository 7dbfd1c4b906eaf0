"""Model: ``zdm lint``: what each statement locks and does (pglast), its hazards, file-order and
phase rules, and the catalog facts text cannot know. May import ``plan``, ``spec`` and ``core``.
"""

"""zdm-runbook: zero-downtime PostgreSQL schema changes by expand and contract, run as notebooks."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]

"""A phase rehearsed on a shadow copy before it runs: do the app versions that must keep working
after the phase still work after each of its steps?

``zdm lint --app-queries`` asks this of a SQL file; here the file is the phase's own steps and the
app is the spec's ``compat`` sets. The steps run for real on a scratch database holding the live
schema and no rows (:mod:`zdm_runbook.lint.shadow`), in order and in the transaction mode the
executor uses, and a step the shadow shows as already done is skipped as the executor skips it.
After each step every statement of the versions that must still work after the phase
(:data:`~zdm_runbook.spec.compat.MUST_WORK`) runs with its sample ``params`` and is undone
(:class:`~zdm_runbook.lint.probe.Probe`). A statement that worked before a step and fails after it
is a no-go that names the step, the statement and PostgreSQL's error: found before any statement
runs on the live database, so nothing is half-applied.

What an empty copy cannot show stays with the live checks: a failure that depends on rows (a
duplicate, a missing parent row) is ignored here, as ``zdm lint`` ignores it, and the compat
check after the phase still runs on the live database. Backfills are data, not schema, and are
not rehearsed. Without the right to create a database (or without ``pg_dump``) the rehearsal says
why and the phase relies on the live checks alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import psycopg

from zdm_runbook.execute.executor import guards_hold
from zdm_runbook.execute.partitions import partition_steps
from zdm_runbook.inspect.preflight import Reason
from zdm_runbook.lint.probe import AppStatement, Probe
from zdm_runbook.lint.shadow import shadow
from zdm_runbook.plan.steps import Step
from zdm_runbook.spec.compat import MUST_WORK, Compat
from zdm_runbook.spec.model import Phase

Conn = psycopg.Connection[Any]
COLUMNS = ["step", "outcome", "detail"]


@dataclass
class Rehearsal:
    """The rehearsal's reasons for the preflight, and one row per step for the notebook."""

    reasons: list[Reason] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def app_statements(compat: Compat | None, phase: Phase) -> list[AppStatement]:
    """The statements that must still work after ``phase``, named ``<version> app: <name>``."""
    if compat is None:
        return []
    must = MUST_WORK[phase]
    return [
        (f"{q.version} app: {q.name}", q.sql, dict(q.params)) for q in compat.queries if q.version in must
    ]


def rehearse(
    conn: Conn,
    steps: Sequence[Step],
    compat: Compat | None,
    phase: Phase | str,
    applied: frozenset[str] = frozenset(),
) -> Rehearsal:
    """Run ``steps`` (one phase's) on a shadow copy of ``conn``'s database with the app's statements
    checked after each (see the module's docstring). ``conn`` is an autocommit connection;
    ``applied``: the keys the ledger records as applied (a step without a catalog guard is done when
    the ledger says so, as in the executor)."""
    app = app_statements(compat, Phase(phase))
    schema_steps = [st for st in steps if st.backfill is None]
    out = Rehearsal()
    if not app or not schema_steps:
        return out
    with shadow(conn) as copy:
        if copy.dsn is None:
            why = f"not rehearsed on a shadow copy ({copy.why_not}): the live checks alone decide"
            out.reasons.append(Reason("info", why))
            return out
        with Probe(copy.dsn, app=app) as probe:
            failing_before = dict(probe.app_failing)
            for step in schema_steps:
                if (step.done_when is None and step.key in applied) or guards_hold(probe.conn, step):
                    out.rows.append({"step": step.key, "outcome": "already applied", "detail": ""})
                    continue
                if not _rehearse_step(probe, step, out):
                    break
            still = {n: e for n, e in probe.app_failing.items() if n in failing_before}
    for name, error in still.items():
        out.reasons.append(
            Reason(
                "warn",
                f"rehearsal on a shadow copy: {name} fails before and after {Phase(phase).value} ({error});"
                " the compat check after the phase will fail unless the spec's statement is wrong",
            )
        )
    return out


def _rehearse_step(probe: Probe, step: Step, out: Rehearsal) -> bool:
    """One step (its pieces, on a partitioned table); False when the rehearsal cannot go on."""
    pieces = partition_steps(probe.conn, step) if step.index is not None else None
    broken: list[str] = []
    for piece in pieces or [step]:
        if pieces and guards_hold(probe.conn, piece):  # the step's own guard was read by the caller
            continue
        for m in probe.run_file(_text(probe, piece)):
            broken += m.app_broken
            if m.sqlstate is not None:
                why = f"{m.error} [SQLSTATE {m.sqlstate}]"
                out.rows.append({"step": step.key, "outcome": "failed on the copy", "detail": why})
                out.reasons.append(
                    Reason(
                        "info",
                        f"rehearsal on a shadow copy stopped at step {step.key}, which failed there ({why});"
                        " the steps after it were not rehearsed",
                    )
                )
                return False
    if broken:
        detail = "; ".join(broken)
        out.rows.append({"step": step.key, "outcome": "BREAKS THE APP", "detail": detail})
        out.reasons.append(
            Reason(
                "no-go",
                f"rehearsal on a shadow copy: step {step.key} ({step.description}) breaks {detail}. Nothing"
                " ran on the live database: change the spec (a new expand step, a view, a default) first",
            )
        )
    else:
        out.rows.append({"step": step.key, "outcome": "ok", "detail": "the app's statements still work"})
    return True


def _text(probe: Probe, step: Step) -> str:
    """The step as the executor runs it: in one transaction, or its one statement alone."""
    body = ";\n".join(st.as_string(probe.conn) for st in step.statements) + ";"
    return f"BEGIN;\n{body}\nCOMMIT;" if step.transactional else body

"""One pass per table: the UPDATE of a key range that does the work of every backfill on it.

Two backfills of one change on one table (a changed type and a new NOT NULL column, say) run as
one keyset walk whose UPDATE sets every target column in one new row version: one dead tuple and
one WAL record per row instead of one per backfill, so half the vacuum and replica traffic for
two. Measured with ``bench/one_pass.py`` on 300,000 rows (PostgreSQL 15 and 18): two walks wrote
1.78x the WAL of one UPDATE setting both columns, the one-pass walk 1.00x.

The UPDATE sets a column only where its own backfill's condition (filter and pending predicate)
holds, ``CASE WHEN cond THEN expr ELSE col END``, on the rows where any holds: a row that needs
only one of the fills is written once, the other column left as it is. Each backfill still counts
its own rows, read just before the UPDATE in the batch's transaction. Measured on 300,000 rows in
20,000-row batches, the count and the UPDATE took about as long as the UPDATE alone, where reading
the flags in a CTE and joining the UPDATE to it (exact counts) took 20 to 40% longer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from zdm_runbook.execute.keyset import Bound, TableKey
from zdm_runbook.plan.steps import BackfillSpec, one_pass, order_matters, qname


@dataclass(frozen=True)
class Walk:
    """The backfills that share one pass over ``specs[0].table``, in step order."""

    specs: tuple[BackfillSpec, ...]

    def __post_init__(self) -> None:
        if not self.specs or not one_pass(list(self.specs)):
            raise ValueError("these backfills cannot share one pass: see plan.steps.one_pass")

    def update(self, key: TableKey, lower: Bound | None, upper: Bound | None) -> sql.Composed:
        """The UPDATE of the range ``(lower, upper]``: each column set only where its backfill's
        condition holds, each row that any of them needs written once."""
        key_range = key.range(lower, upper)
        if len(self.specs) == 1:
            return self.specs[0].update(key_range)
        sets = sql.SQL(", ").join(
            sql.SQL("{col} = CASE WHEN {cond} THEN {value} ELSE {col} END").format(
                col=sql.Identifier(col), cond=spec.condition(), value=value
            )
            for spec in self.specs
            for col, value in spec.assignments
        )
        return sql.SQL("UPDATE {} SET {} WHERE {} AND ({})").format(
            qname(self.specs[0].table),
            sets,
            key_range,
            sql.SQL(" OR ").join(sql.SQL("({})").format(s.condition()) for s in self.specs),
        )

    def counts(self, key: TableKey, lower: Bound | None, upper: Bound | None) -> sql.Composed:
        """How many rows of the range each backfill still has to change: one row of counts."""
        return sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(
                sql.SQL("count(*) FILTER (WHERE {})").format(s.condition()) for s in self.specs
            ),
            qname(self.specs[0].table),
            key.range(lower, upper),
        )


def walks(specs: Sequence[BackfillSpec]) -> list[list[int]]:
    """``specs`` (in step order) grouped into passes, as indexes, the passes in the order they run.

    A backfill joins the first earlier pass it can share (:func:`one_pass`) unless a backfill in a
    later pass must still come before it (:func:`order_matters`); otherwise it starts a pass of its own.
    """
    groups: list[list[int]] = []
    for i, spec in enumerate(specs):
        for g, group in enumerate(groups):
            later = [specs[j] for other in groups[g + 1 :] for j in other]
            if one_pass([*(specs[j] for j in group), spec]) and not any(
                order_matters(spec, o) for o in later
            ):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups

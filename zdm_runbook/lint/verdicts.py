"""Safe or unsafe, read from what the probe measured, with the measurement as the reason.

A statement is **unsafe** when, on a table that existed before the file and has rows:

- it holds a lock that blocks the app's writes (SHARE or stronger) while it rewrites the table,
  scans it, builds an index on it or writes its rows (a lock held from an earlier statement of
  the same transaction counts: the app waits for the commit);
- it takes such a lock with no ``lock_timeout`` in effect (measured: a ``SET LOCAL`` outside a
  block has none) and not ``NOWAIT``: if it waits, every query queues behind it;
- it writes every row of the table in one statement (one transaction row-locking the table);
- a statement of the old app stops working after it (no longer prepares, or its writes now fail);
- or it fails as written.

A relation the file itself created is nobody else's yet, and a table with no rows costs nothing to
scan: ``rows(table)`` says how many rows a table has where the file will really run (the live
database in catalog mode; what the probe read, by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from zdm_runbook.lint.probe import Measured

BLOCKS_WRITES = ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
_NO_TIMEOUT = ("0", "?")


@dataclass
class Verdict:
    """One statement judged: unsafe or not, and each measured reason."""

    index: int
    unsafe: bool = False
    reasons: list[str] = field(default_factory=list)

    def add(self, reason: str) -> None:
        self.unsafe = True
        self.reasons.append(reason)


def judge(
    measured: Iterable[Measured],
    rows: Callable[[str], int | None] | None = None,
) -> list[Verdict]:
    """A verdict per measured statement (see the module's docstring)."""
    created: set[str] = set()
    out = []
    for m in measured:
        v = Verdict(m.index)
        out.append(v)
        if m.sqlstate is not None:
            v.add(f"fails as written: {m.error} [SQLSTATE {m.sqlstate}]")
            continue
        counts = _rows(m, rows)
        for relation, mode in _blocking(m, created).items():
            table = m.owner.get(relation, relation)
            work = _work(m, table, counts.get(table))
            if work:
                v.add(f"holds {mode} on {relation} while it {work}")
            elif m.lock_timeout in _NO_TIMEOUT and not _nowait(m):
                v.add(f"takes {mode} on {relation} with no lock_timeout in effect: a wait queues every query")
        for table, written in _written(m):
            total = counts.get(table)
            if table not in created and total and written >= total and total > 1:
                v.add(f"writes all {written:,} rows of {table} in one transaction: it row-locks them all")
        for failure in m.app_broken:
            v.add(f"the old app breaks: {failure}")
        created |= m.created
    return out


def _blocking(m: Measured, created: set[str]) -> dict[str, str]:
    """Blocking locks, one per table: on the table itself, else on the first of its indexes."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for relation, mode in sorted(m.locks.items(), key=lambda kv: kv[0] in m.owner):
        table = m.owner.get(relation, relation)
        # Nobody writes a materialized view: only a lock that blocks reads matters there.
        blocking = mode == "AccessExclusiveLock" if m.kinds.get(relation) == "m" else mode in BLOCKS_WRITES
        if blocking and table not in created and table not in seen:
            out[relation] = mode
            seen.add(table)
    return out


def _rows(m: Measured, rows: Callable[[str], int | None] | None) -> dict[str, int | None]:
    tables = {m.owner.get(r, r) for r in m.locks} | set(m.scans) | m.rewritten | set(m.blocks_read)
    if rows is None:
        return {t: m.table_rows.get(t) for t in tables}
    return {t: rows(t) for t in tables}


def _work(m: Measured, table: str, count: int | None) -> str | None:
    has_rows = count is None or count > 0
    if table in m.rewritten and has_rows:
        return f"rewrites {table}"
    if m.rows_written and table in m.scans:
        return f"writes {m.rows_written:,} rows of {table}"
    if m.scans.get(table) and has_rows:
        read = m.rows_read.get(table, 0)
        return f"scans {table}" + (f" ({read:,} rows read)" if read else "")
    if m.blocks_read.get(table) and has_rows:
        return f"reads {m.blocks_read[table]:,} blocks of {table}"
    return None


def _written(m: Measured) -> list[tuple[str, int]]:
    if m.kind == "TruncateStmt":  # every row of each table it names, at once
        return [(t, n) for t, n in m.table_rows.items() if t in m.rewritten and n]
    if not m.rows_written or m.kind not in ("UpdateStmt", "DeleteStmt"):
        return []
    return [(t, m.rows_written) for t in m.scans]


def _nowait(m: Measured) -> bool:
    return m.kind == "LockStmt" and "NOWAIT" in m.text.upper()

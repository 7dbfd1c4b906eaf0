"""Go / no-go before a phase touches its tables, with reasons a DBA can act on.

A DDL that needs a table lock queues behind every session already holding one, and every later
query on the table queues behind the DDL. So: no-go while a long or idle transaction holds a lock
on a target table, while a lock queue already exists there, while an anti-wraparound vacuum runs
on it, on a standby, or when replicas lag too far behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from psycopg import sql

from zdm_runbook.core.durations import human_seconds
from zdm_runbook.core.errors import Refused
from zdm_runbook.inspect import locks as lk
from zdm_runbook.lint.catalog_facts import dropped_columns, objects_moved, regclass_text
from zdm_runbook.spec.column_uses import column_uses
from zdm_runbook.spec.model import Table

Level = Literal["no-go", "warn", "info"]


@dataclass(frozen=True)
class Reason:
    """One finding; ``no-go`` findings make the verdict no-go."""

    level: Level
    text: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.text}"


@dataclass
class Verdict:
    """The preflight's answer; ``frames`` holds the views it was computed from, for display."""

    go: bool
    reasons: list[Reason]
    tables: list[str]
    checked_at: datetime
    frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        head = "GO" if self.go else "NO-GO"
        scope = ", ".join(self.tables) or "no tables"
        lines = [f"{head}: preflight on {scope} at {self.checked_at:%Y-%m-%d %H:%M:%S} UTC"]
        held = self.frames.get("table_locks")
        quiet = (
            f"  {len(held)} lock(s) held on these tables, none by a long transaction and none queued:"
            " a DDL waits at most lock_timeout per attempt"
            if held is not None and len(held)
            else "  nothing holds or waits for a lock on these tables"
        )
        lines += [f"  {r}" for r in self.reasons] or [quiet]
        return "\n".join(lines)

    def add(self, reasons: Iterable[Reason], name: str, view: pd.DataFrame) -> None:
        """Another check's reasons (and the view they came from) join the verdict."""
        self.reasons += reasons
        self.go = not any(r.level == "no-go" for r in self.reasons)
        self.frames[name] = view

    def to_dict(self) -> dict[str, Any]:
        return {
            "go": self.go,
            "tables": self.tables,
            "checked_at": self.checked_at.isoformat(),
            "reasons": [{"level": r.level, "text": r.text} for r in self.reasons],
        }


def _who(row: dict[str, Any]) -> str:
    return f"pid {row['pid']} ({row['application_name'] or 'no application_name'})"


def preflight(
    conn: lk.Conn,
    tables: Iterable[Table | str],
    *,
    long_after_s: float = 30.0,
    max_replay_lag_s: float = 60.0,
) -> Verdict:
    """Check the live lock situation on ``tables``; no-go reasons say who, what, and how long.

    ``long_after_s``: a transaction older than this holding a lock on a target table is a no-go
    (any other transaction that old is a warning). ``max_replay_lag_s``: replica lag above it is a no-go.
    """
    reasons: list[Reason] = []
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row and row[0]:
        reasons.append(Reason("no-go", "this server is a standby (read only): connect to the primary"))
    resolved = lk.resolve_tables(conn, tables)
    for name, oid in resolved.items():
        if oid is None:
            reasons.append(Reason("info", f"{name} does not exist (yet): nothing can hold a lock on it"))
    names = [n for n, oid in resolved.items() if oid is not None]
    held = lk.table_lock_rows(conn, names)
    named: set[int] = set()  # pids already named: no second, weaker line about them
    for r in held:
        age = r["xact_age_s"] or 0.0
        if r["granted"] and age >= long_after_s:
            named.add(r["pid"])
            reasons.append(
                Reason(
                    "no-go",
                    f"{_who(r)} {r['state']} for {human_seconds(age)} holds {r['mode']} on"
                    f" {r['relation']}: a DDL would queue behind it, and the app behind the DDL. Wait for"
                    f" it to finish, or end it: SELECT pg_terminate_backend({r['pid']})",
                )
            )
        elif not r["granted"]:
            named.add(r["pid"])
            blockers = ", ".join(str(b) for b in r["blocked_by"] or []) or "?"
            reasons.append(
                Reason(
                    "no-go",
                    f"a lock queue already exists on {r['relation']}: {_who(r)} has waited"
                    f" {human_seconds(r['wait_s'])} for {r['mode']}, blocked by pid {blockers}",
                )
            )
    old = lk.long_running_rows(conn, long_after_s)
    for r in old:
        if r["pid"] not in named:
            reasons.append(
                Reason(
                    "warn",
                    f"{_who(r)} {r['state']}, transaction open for {human_seconds(r['xact_age_s'])}:"
                    " CREATE INDEX CONCURRENTLY waits for it, and it holds back vacuum",
                )
            )
    vac = lk.autovacuum_rows(conn, names)
    for r in vac:
        if r["wraparound"]:
            text = (
                f"pid {r['pid']} runs an anti-wraparound vacuum on {r['table']} ({r['phase']}): it does"
                " not yield its lock, so a DDL would queue behind it; wait for it to finish"
            )
            reasons.append(Reason("no-go", text))
        else:
            text = (
                f"autovacuum (pid {r['pid']}) is running on {r['table']}: it will be cancelled when a"
                " DDL asks for the lock"
            )
            reasons.append(Reason("warn", text))
    lag = lk.replication_rows(conn)
    for r in lag:
        seconds = r["replay_lag_s"] or 0.0
        if seconds > max_replay_lag_s:
            reasons.append(
                Reason(
                    "no-go",
                    f"replica {r['application_name'] or r['client_addr']} replays"
                    f" {human_seconds(seconds)} behind ({r['replay_lag_bytes'] or 0} bytes): let it"
                    " catch up first",
                )
            )
    frames = {  # the very rows the reasons were read from: one moment, one set of queries
        "table_locks": lk.frame(held, lk.TABLE_LOCK_COLUMNS),
        "long_running": lk.frame(old, lk.LONG_RUNNING_COLUMNS),
        "autovacuum": lk.frame(vac, lk.VACUUM_COLUMNS),
        "replication": lk.frame(lag, lk.REPLICA_COLUMNS),
    }
    return Verdict(
        go=not any(r.level == "no-go" for r in reasons),
        reasons=reasons,
        tables=names,
        checked_at=datetime.now(UTC),
        frames=frames,
    )


def snapshot(
    conn: lk.Conn, tables: Iterable[Table | str] = (), *, long_after_s: float = 30.0
) -> dict[str, Any]:
    """Every lock view at once (what ``zdm locks`` prints), plus the preflight verdict when ``tables``."""
    names = list(tables)
    row = conn.execute("SELECT current_setting('server_version')").fetchone()
    snap: dict[str, Any] = {
        "version": f"PostgreSQL {row[0] if row else '?'}",
        "blocking_tree": lk.blocking_tree(conn),
        "waiting": lk.waiting_sessions(conn),
        "verdict": None,
    }
    if names:
        verdict = preflight(conn, names, long_after_s=long_after_s)
        snap.update(verdict.frames, tables=verdict.tables, verdict=verdict)
    else:
        snap["long_running"] = lk.long_running(conn, long_after_s)
        snap["autovacuum"] = lk.autovacuum(conn)
        snap["replication"] = lk.replication_lag(conn)
    return snap


class PreflightRefused(Refused):
    """The live lock report said no-go and ``require_go`` is set: no DDL ran."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(
            f"{verdict}\nNothing ran. Deal with what is named above, then re-run the phase"
            " (or set require_go to False to rely on the lock timeouts and the live checks alone)."
        )
        self.verdict = verdict


def drops_report(conn: lk.Conn, statements: Iterable[str]) -> tuple[list[Reason], pd.DataFrame]:
    """What the phase's column drops take along, said before the drop: PostgreSQL drops an index or
    a constraint on a dropped column with it, silently (``info``), and refuses the drop while a
    view, a policy, a trigger... uses it (``no-go``: the step would fail; measured in
    :mod:`zdm_runbook.spec.column_uses`). The recipe's own dual-write triggers, dropped in the same
    step, are left out."""
    reasons, rows = [], []
    moved: set[str] = set()  # what the phase's steps (this one too) drop or replace before a drop
    for text in statements:
        moved |= objects_moved(text)
        for table, column in dropped_columns(text):
            where = sql.SQL("to_regclass({})").format(sql.Literal(regclass_text(table)))
            uses = column_uses(conn, where, column)
            name = f"{'.'.join(table)}.{column}"
            if first := [u.what for u in uses if u.breaks_drop and u.name in moved]:
                rows.append((name, ", ".join(first), "moved off it by an earlier step of this phase"))
                reasons.append(
                    Reason("info", f"{', '.join(first)} uses {name}: a step before the drop moves it")
                )
            if refusing := [u.what for u in uses if u.breaks_drop and u.name not in moved]:
                rows.append((name, ", ".join(refusing), "refuses the drop"))
                reasons.append(
                    Reason(
                        "no-go",
                        f"dropping {name} fails while {', '.join(refusing)} uses it: move each to the"
                        " new column (CREATE OR REPLACE VIEW, or drop and re-create it), or drop it,"
                        " then run the phase again",
                    )
                )
            if taken := [u.what for u in uses if not u.breaks_drop]:
                rows.append((name, ", ".join(taken), "dropped with it"))
                reasons.append(
                    Reason(
                        "info",
                        f"dropping {name} also drops what uses it: {', '.join(taken)};"
                        " re-create on the new shape what the app still needs",
                    )
                )
    return reasons, pd.DataFrame(rows, columns=["column dropped", "used by", "what the drop does"])

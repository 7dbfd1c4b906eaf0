"""zdm lint (catalog mode and text mode) against squawk on the same corpus, side by side in one run.

The corpus's labels are measured (tests/test_lint_measured.py). Catalog mode lints each case with
a live database holding the measuring schema, its rows and the case's setup, and the old app's
statements (tests/lint_measure.py): each file runs on a shadow copy of that database.

Every corpus statement becomes its own file behind the same two lines (``SET lock_timeout``,
``SET statement_timeout``), so each is judged on its own merits. A tool "flags" a statement when
it reports an error on it (zdm: severity ``error``; squawk reports everything as a warning, so
any finding counts, and separately any finding outside its style rules). Printed: detection rate
on the unsafe statements, false-alarm rate on the safe ones, and statements per second for one
whole run of each command over all files (process start included).

    python bench/lint_vs_squawk.py          # needs squawk: pip install squawk-cli
    python bench/lint_vs_squawk.py --no-catalog    # text mode and squawk only (no server)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.lint_corpus import CORPUS, SETUP
from tests.lint_measure import OLD_APP, scratch

PRELUDE = "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n"
PRELUDE_LINES = PRELUDE.count("\n")
# squawk rules about style or robustness, not about live traffic (excluded in the second squawk row)
SQUAWK_STYLE = {
    "prefer-robust-stmts",
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-identity",
    "prefer-text-field",
    "prefer-timestamptz",
    "ban-char-field",
    "require-table-schema",
    "prefer-timestamp-tz",
}


def rates(flagged: set[int]) -> tuple[float, float]:
    unsafe = [i for i, (_, label) in enumerate(CORPUS) if label]
    safe = [i for i, (_, label) in enumerate(CORPUS) if not label]
    detection = sum(i in flagged for i in unsafe) / len(unsafe)
    false_alarms = sum(i in flagged for i in safe) / len(safe)
    return detection, false_alarms


def catalog_mode() -> tuple[set[int], float]:
    """Catalog mode on every case, on a throw-away embedded server: flagged cases and seconds."""
    import psycopg  # noqa: PLC0415

    from zdm_runbook.demo.embedded import LocalServer, embedded_bin_dir  # noqa: PLC0415
    from zdm_runbook.lint.linter import lint_text  # noqa: PLC0415

    server = LocalServer(Path(tempfile.mkdtemp(prefix="zdm-lint-bench-pg-")), embedded_bin_dir())
    admin = server.start()
    flagged: set[int] = set()
    started = time.perf_counter()
    try:
        for i, (sql, _) in enumerate(CORPUS):
            with scratch(admin, SETUP.get(sql, "")) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
                _, found = lint_text(PRELUDE + sql + ";\n", f"{i:04d}.sql", 18, conn=conn, app=OLD_APP)
            if any(f.severity == "error" for f in found):
                flagged.add(i)
    finally:
        seconds = time.perf_counter() - started
        server.destroy()
    return flagged, seconds


def main() -> int:
    squawk = shutil.which("squawk") or str(Path(sys.executable).with_name("squawk"))
    if not Path(squawk).exists():
        print("squawk is not installed: pip install squawk-cli", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="zdm-lint-bench-"))
    files = []
    for i, (sql, _) in enumerate(CORPUS):
        path = folder / f"{i:04d}.sql"
        path.write_text(PRELUDE + sql + ";\n")
        files.append(str(path))
    zdm = [sys.executable, "-m", "zdm_runbook", "lint", "--format", "json", *files]
    started = time.perf_counter()
    out = subprocess.run(zdm, capture_output=True, text=True, check=False)
    zdm_seconds = time.perf_counter() - started
    zdm_flagged = {int(Path(f["file"]).stem) for f in json.loads(out.stdout) if f["severity"] == "error"}
    from zdm_runbook.lint.linter import lint_text  # noqa: PLC0415

    started = time.perf_counter()
    for path in files:
        lint_text(Path(path).read_text(), path)
    in_process = time.perf_counter() - started
    started = time.perf_counter()
    out = subprocess.run([squawk, "--reporter", "json", *files], capture_output=True, text=True, check=False)
    squawk_seconds = time.perf_counter() - started
    found = json.loads(out.stdout or "[]")
    version = subprocess.run(
        [squawk, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    squawk_any = {int(Path(f["file"]).stem) for f in found if f["line"] >= PRELUDE_LINES}
    squawk_safety = {
        int(Path(f["file"]).stem)
        for f in found
        if f["line"] >= PRELUDE_LINES and f["rule_name"] not in SQUAWK_STYLE
    }
    unsafe = sum(label for _, label in CORPUS)
    print(f"corpus: {len(CORPUS)} statements, {unsafe} unsafe, {len(CORPUS) - unsafe} safe; {version}")
    print(f"  {'tool':<28}{'detection':>10}{'false alarms':>14}{'statements/s':>14}")
    n = len(CORPUS)
    rows = []
    if "--no-catalog" not in sys.argv:
        rows.append(("zdm lint, catalog mode", *catalog_mode()))
    for name, flagged, seconds in (
        *rows,
        ("zdm lint, text mode", zdm_flagged, zdm_seconds),
        ("zdm lint, text (in process)", zdm_flagged, in_process),
        ("squawk (any finding)", squawk_any, squawk_seconds),
        ("squawk (safety rules only)", squawk_safety, squawk_seconds),
    ):
        detection, false_alarms = rates(flagged)
        print(f"  {name:<28}{detection:>10.2f}{false_alarms:>14.2f}{n / seconds:>14,.0f}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

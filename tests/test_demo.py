"""``zdm demo`` end to end at a small size: four phases through papermill under live traffic,
0 app errors, 0 pgbench failures, every acknowledged write present, eight archived files."""

from __future__ import annotations

from pathlib import Path

import nbformat

from .helpers import zdm


def test_demo_runs_all_four_phases_under_traffic_without_errors(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    done = zdm("demo", "--rows", "5000", "--archive", str(archive), timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for phase in ("expand", "migrate", "switch", "contract"):
        assert f"== {phase}: succeeded in " in out
    assert "app errors: 0; pgbench failed transactions: 0" in out
    assert "missing or changed at the end: 0" in out
    backfilled = int(out.split("public.orders backfilled (")[1].split()[0].replace(",", ""))
    # customer_ref and currency of the 5,000 orders (and rows added meanwhile): rows, not row updates
    assert 5_000 <= backfilled < 10_000 and "2 backfill steps)" in out
    assert "old app stopped" in out and out.index("old app stopped") < out.index("== contract:")
    assert "demo: OK" in out
    for app in ("old-app", "new-app"):
        assert f"{app}  migrate" in out or f"{app} migrate" in out
    files = sorted((archive / "orders-customer-ref").glob("*-*.*"))
    assert (
        len([f for f in files if f.suffix == ".ipynb"]) == 4
        and len([f for f in files if f.suffix == ".html"]) == 4
    )
    contract = nbformat.read(
        next(f for f in files if f.name.startswith("contract-") and f.suffix == ".ipynb"), 4
    )
    text = str(contract)
    assert "deploy cycle waived: demo: the old app stopped before contract" in text
    assert "compatibility after contract: 4 statements, 0 failed; the new app must work" in text


def test_demo_of_the_key_change_swaps_a_referenced_primary_key_under_traffic(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    done = zdm("demo", "--change", "key", "--rows", "5000", "--archive", str(archive), timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    assert "01-change_key_type-swap: applied" in out
    assert "02-change_key_type-swap: applied" in out  # orders.customer_id, which holds the key
    assert "02-change_key_type-index-twins: applied in 1 piece " in out  # orders_customer_id_idx
    assert "past the int range: the old app's statement placed order" in out
    assert "app errors: 0; pgbench failed transactions: 0" in out
    assert "missing or changed at the end: 0" in out
    assert "new app started: it uses customers.id as the old app does" in out
    assert "demo: OK" in out
    assert len(list((archive / "customers-id-bigint").glob("*.html"))) == 4

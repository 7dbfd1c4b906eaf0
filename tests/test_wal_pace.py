"""The WAL cap's arithmetic (:mod:`zdm_runbook.execute.wal_pace`); that a real backfill keeps the
server's WAL under it is in ``tests/test_backfill.py``."""

from __future__ import annotations

import pytest

from zdm_runbook.execute.wal_pace import MAX_PAUSE, WalPace


def test_the_reference_stays_until_the_average_since_it_is_back_under_the_cap() -> None:
    pace = WalPace(12)
    assert pace.unknown
    assert pace.over(0.0, 0.0, 0) is None  # the first reading: the reference
    assert pace.over(0.5, 30e6, 2000) == pytest.approx(60.0)  # a burst: held
    assert pace.over(1.0, 31e6, 2000) == pytest.approx(31.0)  # still over, since the same reference
    assert pace.over(3.0, 33e6, 2000) is None  # 11 MB/s since it: lifted, and the new reference
    assert pace.over(3.5, 33e6 + 4e6, 2200) is None  # 8 MB/s since 3.0, not 60 since 0.0
    assert not pace.unknown


def test_the_pause_after_a_batch_keeps_its_rows_at_the_cap_the_apps_wal_counted_in() -> None:
    pace = WalPace(10)
    pace.over(0.0, 0.0, 0)
    pace.over(1.0, 5e6, 1000)  # 5 kB per row walked (the app's WAL in that second included)
    assert pace.per_row == pytest.approx(5000)
    assert pace.pause_after(1000, 0.1) == pytest.approx(0.4)  # 5 MB a batch at 10 MB/s: 0.5 s a cycle
    assert pace.pause_after(1000, 0.8) == 0.0  # a batch slower than the cap needs no pause
    assert pace.pause_after(4000, 0.1) == pytest.approx(1.9)
    # The app starts writing 24.5 MB/s and the backfill walks 100 rows in the next second: held,
    # and the estimate per row (250 kB, nearly all the app's) would make the pause 50 times longer.
    assert pace.over(2.0, 30e6, 1100) == pytest.approx(25.0)
    assert pace.pause_after(100, 0.01) == MAX_PAUSE  # 2.49 s: a longer wait is the hold's


def test_no_cap_no_hold_no_pause() -> None:
    pace = WalPace(0)
    assert not pace.unknown
    assert pace.over(0.0, 0.0, 0) is None
    assert pace.over(1.0, 1e12, 10) is None
    assert pace.pause_after(10**6, 0.0) == 0.0

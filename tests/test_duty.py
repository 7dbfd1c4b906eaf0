"""The duty controller: steered by the app's sessions in flight while a batch runs and while it rests.

The controller is arithmetic on sample counts (tested on given counts); the sampler reads a real
server's sessions: an app session running a statement counts, an idle one and ours do not.
"""

from __future__ import annotations

import itertools
import threading
import time

import psycopg
import pytest

from zdm_runbook.core.connect import connect
from zdm_runbook.execute.duty import (
    GROW,
    GROW_FAST,
    MAX_DUTY,
    MIN_DUTY,
    OPEN_AFTER,
    OPENING_EVERY,
    SAMPLE_EVERY,
    WINDOW,
    DutyController,
    Sampler,
    sample_every,
)


def _controller(open_below: float = 0.0) -> DutyController:
    return DutyController(0.15, 1.3, batch_cap=250, min_batch=100, max_batch=500, open_below=open_below)


def _windows(ctl: DutyController, in_flight_resting: float, in_flight_batching: float, n: int) -> list[float]:
    """Feed ``n`` whole windows of 50 samples a side; the duty after each."""
    duties = []
    for _ in range(n):
        rest = (50, round(50 * in_flight_resting))
        run = (50, round(50 * in_flight_batching))
        duties.append(ctl.observe(rest, run, now=ctl._since + WINDOW + 0.01))
    return duties


def test_an_app_that_does_not_slow_down_gets_more_of_the_server() -> None:
    ctl = _controller()
    ctl.observe((0, 0), (0, 0), now=1000.0)
    duties = _windows(ctl, 0.4, 0.42, 20)
    assert duties[0] == pytest.approx(0.15 * GROW_FAST)  # flat: the steps double
    assert all(b >= a for a, b in itertools.pairwise(duties))
    assert duties[-1] == MAX_DUTY  # never all of it: rests keep the baseline fresh
    assert ctl.batch_cap == 500 and ctl.slowdown  # the cap grows to its bound, no further
    assert ctl.slowdown is not None and ctl.slowdown == pytest.approx((0.42 + 0.05) / (0.4 + 0.05), rel=0.01)


def test_nearer_the_limit_the_steps_are_small() -> None:
    ctl = _controller()
    ctl.observe((0, 0), (0, 0), now=1000.0)
    duties = _windows(ctl, 0.4, 0.52, 3)  # 1.27x: under the 1.3 allowed, not flat
    assert duties == pytest.approx([0.15 * GROW, 0.15 * GROW**2, 0.15 * GROW**3])


def test_an_app_that_slows_down_while_we_batch_gets_it_back_at_once() -> None:
    ctl = _controller()
    ctl.observe((0, 0), (0, 0), now=1000.0)
    _windows(ctl, 0.4, 0.4, 6)
    high, cap = ctl.duty, ctl.batch_cap
    duties = _windows(ctl, 0.4, 1.2, 8)  # requests take 3x as long while a batch runs
    assert duties[0] < high and ctl.batch_cap < cap
    assert duties[-1] == MIN_DUTY and ctl.batch_cap == 100
    assert ctl.slowdown is not None and ctl.slowdown > 2.5


def test_a_backlog_that_outlives_the_batches_counts_as_a_slowdown() -> None:
    ctl = _controller()
    ctl.observe((0, 0), (0, 0), now=1000.0)
    _windows(ctl, 0.4, 0.4, 8)
    high = ctl.duty
    # The app fell behind: as many in flight while we rest as while we batch, but three times
    # its usual number. Batching / resting says 1.0; against the baseline it is a slowdown.
    duties = _windows(ctl, 1.2, 1.2, 3)
    assert duties[-1] < high and ctl.baseline == pytest.approx(0.4)


def test_no_decision_without_a_whole_window_of_samples() -> None:
    ctl = _controller()
    assert ctl.observe((50, 0), (2, 2), now=1000.0) == 0.15  # the window has just begun
    assert ctl.observe((0, 0), (13, 13), now=1002.0) == 0.15  # long enough, but 15 samples batching
    assert ctl.observe((0, 0), (5, 5), now=1002.1) == 0.15  # still 20
    slower = ctl.observe((0, 0), (5, 3), now=1002.2)  # 25: decide, on 23 of 25 samples in flight
    assert slower == pytest.approx(0.15 * 0.5)  # far over: halved, no more
    assert ctl.baseline == 0.0 and ctl.slowdown == pytest.approx((23 / 25 + 0.05) / 0.05)
    # Batching all the time gives no rests: the last baseline still judges the batches (and the
    # moving average still remembers the slow window).
    ctl.duty = 0.4
    assert ctl.observe((0, 0), (60, 0), now=1002.2 + WINDOW) == pytest.approx(0.4 * 0.5)
    assert ctl.baseline == 0.0 and ctl.slowdown == pytest.approx(((23 / 25 + 0.05) / 0.05 + 1) / 2)


def test_just_over_the_limit_the_duty_shrinks_in_proportion() -> None:
    """Over the limit by a little, the step is limit / slowdown rather than a halving: one noisy
    window costs a little, a real overload still halves it at once."""
    ctl = _controller()
    ctl.observe((0, 0), (0, 0), now=1000.0)
    duties = _windows(ctl, 0.4, 0.6, 1)  # (0.6 + 0.05) / (0.4 + 0.05) = 1.44x against 1.3 allowed
    assert duties[0] == pytest.approx(0.15 * 1.3 / ((0.6 + 0.05) / (0.4 + 0.05)))
    assert 0.15 * 0.5 < duties[0] < 0.15


def test_an_app_with_less_than_one_session_in_a_transaction_at_rest_opens_the_duty_at_once() -> None:
    """The opening reads the first OPEN_AFTER resting samples, before any window is whole; after
    it the windows steer as usual, so a slowdown still takes the duty back."""
    ctl = _controller(open_below=1.0)
    assert ctl.observe((OPEN_AFTER - 1, 3), (4, 1), now=1000.0) == 0.15  # too few samples at rest
    assert ctl.opened is None
    assert ctl.observe((1, 0), (1, 0), now=1000.5) == MAX_DUTY  # 3 in flight over 12 samples
    assert ctl.opened is True and ctl.slowdown is None  # no window decided it
    assert ctl.describe(0.003) == (
        "sharing the server with the app: batches 50% of the time"
        " (the app keeps 0.2 sessions in a transaction: opened at once), 3 ms between batches"
    )
    duties = _windows(ctl, 0.3, 1.2, 2)
    assert duties[0] < MAX_DUTY and duties[1] < duties[0]
    assert "opened" not in ctl.describe(0.01) and "app slowed" in ctl.describe(0.01)


def test_an_app_with_a_session_or_more_in_a_transaction_at_rest_keeps_the_start_duty() -> None:
    ctl = _controller(open_below=1.0)
    assert ctl.observe((OPEN_AFTER, OPEN_AFTER), (4, 4), now=1000.0) == 0.15  # 1.0 in flight: not under
    assert ctl.opened is False
    # Decided once: a quieter moment later (0.5 in flight) does not open it.
    assert ctl.observe((8, 4), (0, 0), now=1000.5) == 0.15
    assert _windows(ctl, 1.0, 1.0, 1) == [pytest.approx(0.15 * GROW_FAST)]  # the windows steer as before


@pytest.mark.pg
def test_the_sampler_counts_the_app_in_flight_not_idle_sessions_nor_ours(db: str) -> None:
    sampler = Sampler(db)
    with (
        psycopg.connect(db, autocommit=True, application_name="app") as app,
        psycopg.connect(db, autocommit=True, application_name="idle app"),
        psycopg.connect(db, application_name="app in a transaction") as between,
        connect(db, phase="other", autocommit=True) as ours,
    ):
        between.execute("SELECT 1")  # a transaction open, no statement running: idle in transaction
        ours_busy = threading.Thread(target=lambda: ours.execute("SELECT pg_sleep(1.5)"))
        app_busy = threading.Thread(target=lambda: app.execute("SELECT pg_sleep(0.5)"))
        ours_busy.start()
        sampler.start()
        try:
            time.sleep(0.5)  # resting: only ours is running a statement
            sampler.batching(True)
            app_busy.start()
            app_busy.join()  # batching while the app runs its statement
            sampler.batching(False)
            ours_busy.join()
        finally:
            sampler.close()
    (rest_n, rest_sessions), (run_n, run_sessions), (open_n, open_sessions) = sampler.window()
    assert rest_n >= 10 and run_n >= 10
    assert rest_sessions <= 2  # at most the app's statement starting at the edge
    assert open_n == rest_n and rest_n <= open_sessions <= rest_n + 2  # the one in a transaction, at rest
    assert run_sessions >= run_n * 0.7  # the app, in flight in (nearly) every sample


@pytest.mark.pg
def test_a_backfill_opens_for_an_app_with_little_in_a_transaction_and_not_for_one_that_keeps_two(
    db: str,
) -> None:
    """The opening reads real sessions: point reads every 10 ms keep far less than one session in a
    transaction; two sessions always running a statement keep two, and so do two transactions
    left open between statements."""
    from zdm_runbook import ledger  # noqa: PLC0415
    from zdm_runbook.execute.backfill import BackfillEngine, BackfillSettings  # noqa: PLC0415
    from zdm_runbook.execute.progress import LogProgress  # noqa: PLC0415
    from zdm_runbook.plan.planner import build_plan  # noqa: PLC0415
    from zdm_runbook.spec.change import parse_change  # noqa: PLC0415
    from zdm_runbook.spec.model import Phase  # noqa: PLC0415

    from .sessions import AppProbe  # noqa: PLC0415

    plan = build_plan(
        parse_change('change: fill-w\noperations:\n  - backfill: {table: big, set: {w: "v * 2"}}\n')
    )
    step = plan.for_phase(Phase.MIGRATE)[0]
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE big (id bigint PRIMARY KEY, v int, w bigint)")
        c.execute("INSERT INTO big SELECT g, g % 1000, NULL FROM generate_series(1, 40000) g")

    lines: list[str] = []

    def backfill() -> BackfillEngine:
        lines.clear()
        with psycopg.connect(db, autocommit=True) as c:
            c.execute("DROP SCHEMA IF EXISTS zdm CASCADE")
            c.execute("UPDATE big SET w = NULL")
            ledger.ensure(c)
            ledger.record_change(c, "fill-w", "", "x")
        settings = BackfillSettings(busy_max_batch_size=100, min_batch_size=100)
        engine = BackfillEngine(db, "fill-w", step, settings, LogProgress(0.0, lines.append))
        try:
            engine.run()
        finally:
            engine.close()
        return engine

    with AppProbe(db, "SELECT v FROM big WHERE id = 7", every=0.01):
        time.sleep(0.3)
        light = backfill()
    # The headless log line says so, as the notebook's live line does.
    opened = "rows; sharing the server with the app: batches 50% of the time (the app keeps 0."
    assert any(opened in line for line in lines), lines[-3:]
    assert lines[-1].startswith("done: ") and "sharing" not in lines[-1]
    # The summary, the run's record, says how it shared: its measured share of the time in batches.
    share = sum(b.seconds for b in light.state.batches) / light.state.elapsed
    assert 0.1 < share < 0.6, share
    assert (
        f"; shared the server with the app: in batches {100 * share:.0f}% of the time"
        in light.state.summary()
    )
    with AppProbe(db, "SELECT pg_sleep(0.3)", every=0.0), AppProbe(db, "SELECT pg_sleep(0.3)", every=0.0):
        time.sleep(0.3)
        busy = backfill()
    # Two transactions open and between statements (as TPC-B's are, most of the time): no statement
    # runs, yet the app keeps two transactions going.
    with (
        psycopg.connect(db, application_name="app") as one,
        psycopg.connect(db, application_name="app") as two,
    ):
        one.execute("SELECT 1")
        two.execute("SELECT 1")
        between = backfill()
    assert light.state.app_busy and busy.state.app_busy and between.state.app_busy
    assert between.duty.opened is False and between.duty.opening is not None and between.duty.opening >= 1.5
    assert light.duty.opened is True and light.duty.opening is not None and light.duty.opening < 0.5
    assert busy.duty.opened is False and busy.duty.opening is not None and busy.duty.opening >= 1.5


def test_busy_max_duty_bounds_the_growth_and_the_opening() -> None:
    ctl = DutyController(0.4, 1.3, batch_cap=250, min_batch=100, max_batch=500, open_below=1.0, max_duty=0.3)
    assert ctl.duty == 0.3  # a start above the bound starts at it
    ctl.observe((OPEN_AFTER, 0), (1, 0), now=1000.0)
    assert ctl.opened is True and ctl.duty == 0.3
    assert max(_windows(ctl, 0.4, 0.4, 10)) == 0.3
    assert DutyController(0.1, 1.3, 250, 100, 500, max_duty=0.9).max_duty == MAX_DUTY  # never above


def test_the_opening_samples_come_sooner_than_the_windows() -> None:
    """The opening's resting samples are taken at OPENING_EVERY, then the windows' at SAMPLE_EVERY:
    a short table is not done at the start duty before the opening can decide."""
    assert [sample_every(n) for n in (0, OPEN_AFTER - 1)] == [OPENING_EVERY, OPENING_EVERY]
    assert sample_every(OPEN_AFTER) == sample_every(OPEN_AFTER + 100) == SAMPLE_EVERY
    assert OPEN_AFTER * OPENING_EVERY < 0.25 < OPEN_AFTER * SAMPLE_EVERY

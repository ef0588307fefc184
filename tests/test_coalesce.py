"""Graceful overload: the coalescing decision, and the hub sending on a tick while behind."""

from __future__ import annotations

from flowboard.protocol import v2
from flowboard.server.coalesce import Coalescer
from tests.test_session import TICKERS, FakeSink, Harness, events_of


def test_the_interval_lengthens_while_the_loop_is_behind_and_returns_to_zero_after() -> None:
    """Late timers or a busy loop double the interval (from the minimum, up to the maximum);
    a recovered loop halves it, and below the minimum frames go out at once again."""
    coalescer = Coalescer(min_interval_s=0.02, max_interval_s=0.5, behind_lag_s=0.05, recovered_lag_s=0.02)
    assert coalescer.observe(lag_s=0.001, busy_share=0.1) == 0.0
    assert coalescer.observe(lag_s=0.030, busy_share=0.1) == 0.0, "a little late is not behind"
    assert coalescer.observe(lag_s=0.060, busy_share=0.1) == 0.02
    assert coalescer.observe(lag_s=0.001, busy_share=0.7) == 0.04
    for _ in range(10):
        coalescer.observe(lag_s=0.2, busy_share=0.9)
    assert coalescer.interval_s == 0.5
    # In between (neither behind nor recovered) it holds.
    assert coalescer.observe(lag_s=0.03, busy_share=0.3) == 0.5
    intervals = [coalescer.observe(lag_s=0.001, busy_share=0.1) for _ in range(6)]
    assert intervals == [0.25, 0.125, 0.0625, 0.03125, 0.0, 0.0]


def test_a_timer_late_only_because_of_our_own_pass_is_not_behind() -> None:
    """With thousands of clients one publish pass blocks the loop for tens of ms: a timer late by
    no more than that pass, at a low busy share, must not start coalescing (it would only add
    latency); lag beyond the pass, or a high busy share, still does."""
    coalescer = Coalescer(min_interval_s=0.02, max_interval_s=0.5, behind_lag_s=0.05, recovered_lag_s=0.02)
    assert coalescer.observe(lag_s=0.080, busy_share=0.3, own_pass_s=0.075) == 0.0
    assert coalescer.observe(lag_s=0.200, busy_share=0.3, own_pass_s=0.075) == 0.02
    coalescer = Coalescer(min_interval_s=0.02, max_interval_s=0.5, behind_lag_s=0.05, recovered_lag_s=0.02)
    assert coalescer.observe(lag_s=0.080, busy_share=0.7, own_pass_s=0.075) == 0.02


def test_the_busy_share_is_a_mean_over_about_a_second_not_one_period() -> None:
    """One 50 ms period spent wholly on one publish pass (thousands of writes) among idle ones
    is not overload: the share weighs in by its period's length over a one-second horizon. A
    loop busy period after period for most of a second is, and coalescing starts."""
    coalescer = Coalescer(min_interval_s=0.02, busy_horizon_s=1.0)
    assert coalescer.observe(lag_s=0.0, busy_share=0.9, period_s=0.05) == 0.0
    assert abs(coalescer.busy_share - 0.045) < 1e-9
    for _ in range(3):
        assert coalescer.observe(lag_s=0.0, busy_share=0.0, period_s=0.05) == 0.0
    intervals = [coalescer.observe(lag_s=0.0, busy_share=0.9, period_s=0.05) for _ in range(20)]
    assert intervals[0] == 0.0 and intervals[-1] > 0.0
    assert coalescer.busy_share > 0.5


def test_the_hub_reports_its_longest_pass() -> None:
    """Each publish records how long it held the loop, so the coalescer can tell its own pass
    from a loop that is behind."""
    h = Harness()
    h.hub.busy_clock = iter([0.0, 0.010, 1.0, 1.030, 2.0, 2.005]).__next__
    h.hub.longest_pass_s = 0.0
    busy_before = h.hub.busy_s
    for index in range(3):
        h.trade(TICKERS[index], 5000, 100, "yes")
    assert abs(h.hub.longest_pass_s - 0.030) < 1e-9
    assert abs(h.hub.busy_s - busy_before - 0.045) < 1e-9


def test_while_coalescing_trades_wait_for_the_tick_and_go_out_batched_in_one_frame() -> None:
    """With an interval set, publish only offers; the tick sends each group one frame with every
    trade since the last, and the views stay exact."""
    h = Harness()
    clients = [h.connect(v2.DEFAULT_CHANNELS) for _ in range(2)]
    for client in clients:
        client.sink = FakeSink(h, client)
        h.read(client)
    h.trade(TICKERS[0], 5000, 100, "yes")
    for client in clients:
        h.read(client)
    h.advance(1)  # caught up: they join one group at the next publish
    assert clients[0].group is not None and clients[0].group is clients[1].group
    sent_before = [len(h.frames[client]) for client in clients]
    h.hub.coalesce_interval_s = 0.1
    for index in range(5):
        h.trade(TICKERS[index % 3], 5000 + index, 100, "yes")
    assert [len(h.frames[client]) for client in clients] == sent_before
    h.hub.send(h.now)
    for client, before in zip(clients, sent_before, strict=True):
        assert len(h.frames[client]) == before + 1
        trades = [event for event in events_of(h.frames[client][-1]) if event[0] == "t"]
        assert len(trades) == 1 and len(trades[0]) == 6
        h.check(client)
    h.hub.coalesce_interval_s = 0.0
    h.trade(TICKERS[1], 5000, 100, "yes")
    assert [len(h.frames[client]) for client in clients] == [before + 2 for before in sent_before]

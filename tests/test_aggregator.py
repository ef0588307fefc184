"""The aggregation core, without an event loop: exact instants, tie-breaks, and equality
with a from-scratch reference and with a client that folds the event stream."""

from __future__ import annotations

import sys
from calendar import timegm
from collections.abc import Iterator
from types import FrameType
from typing import Any, Literal

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from reference_aggregator import ReferenceAggregator

from flowboard.aggregate.aggregator import Aggregator, retention_start_ms
from flowboard.aggregate.events import (
    EMPTY_WINDOW,
    ClockTicked,
    Event,
    HotChanged,
    HotEventsChanged,
    MarketAdded,
    MarketForgotten,
    MetaChanged,
    TopChanged,
    TradeAdded,
    WindowChanged,
    WindowStats,
)
from flowboard.aggregate.events_rank import EventMarket, HotEvent
from flowboard.errors import ConfigError
from flowboard.model import DAY_MS, HOUR_MS, MINUTE_MS, MarketMeta, Side, Trade, is_parlay

WINDOW = 600_000
#: 2024-03-09 23:50:00 UTC: ten minutes before a UTC midnight, on a minute and hour boundary's doorstep
T0 = timegm((2024, 3, 9, 23, 50, 0)) * 1000
MIDNIGHT = T0 + 10 * MINUTE_MS


def make_trade(
    trade_id: str,
    ts_ms: int,
    ticker: str = "KXBTC-24MAR10-B70000",
    yes_price: int = 5000,
    count: int = 100,
    side: Side = "yes",
) -> Trade:
    return Trade(trade_id, ticker, yes_price, count, side, ts_ms)


def default_view(events: list[Event]) -> list[Event]:
    """The events about the default view's markets, trades and clock: without the rankings that
    include parlays and without the hot events (tested on their own below)."""
    return [
        event
        for event in events
        if not isinstance(event, HotEventsChanged) and not getattr(event, "parlays", False)
    ]


def of_type(events: list[Event], kind: type[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


# -- window ------------------------------------------------------------------------------------


def test_trade_stays_in_window_until_exactly_window_ms_later() -> None:
    """A trade at t is in the window at t+window-1 and leaves it at t+window, announced once."""
    agg = Aggregator()
    agg.add_trade(make_trade("a", T0), T0)
    assert default_view(agg.advance(T0 + WINDOW - 1)) == [ClockTicked(T0 + WINDOW - MINUTE_MS)]
    assert agg.window(0).trades == 1
    assert agg.active_markets() == 1

    events = agg.advance(T0 + WINDOW)
    assert WindowChanged(0, EMPTY_WINDOW) in events
    assert TopChanged((), derivable=False) in events
    assert HotChanged(()) in events
    assert agg.window(0) == EMPTY_WINDOW
    assert agg.active_markets() == 0
    assert agg.advance(T0 + WINDOW + 1000) == []


def test_first_trade_events_come_in_contract_order() -> None:
    """A new market's first trade yields MarketAdded, TradeAdded, TopChanged(derivable) and
    HotChanged, each for the view without parlays and then for the one with them."""
    agg = Aggregator()
    trade = make_trade("a", T0)
    window = WindowStats(contracts=100, usd=500_000, trades=1, yes_flow=100, no_flow=0)
    assert agg.add_trade(trade, T0) == [
        MarketAdded(0, trade.ticker),
        TradeAdded(trade, 0, window, 0),
        TopChanged((trade,), derivable=True),
        TopChanged((trade,), derivable=True, parlays=True),
        HotChanged((0,)),
        HotChanged((0,), parlays=True),
    ]
    assert agg.trades_total == 1
    assert agg.market_id(trade.ticker) == 0
    assert agg.ticker(0) == trade.ticker
    assert agg.markets_count() == 1


def test_sub_cent_prices_and_fractional_counts_stay_exact() -> None:
    """$0.360505 YES with 1.50 contracts bought by a NO taker is $0.9592425 of premium, to the unit."""
    agg = Aggregator()
    agg.add_trade(make_trade("a", T0, yes_price=360_505, count=150, side="no"), T0)
    agg.add_trade(make_trade("b", T0, yes_price=360_505, count=1, side="yes"), T0)
    assert agg.window(0) == WindowStats(
        contracts=151, usd=150 * 639_495 + 360_505, trades=2, yes_flow=1, no_flow=150
    )
    assert agg.window(0).net_flow == -149
    assert agg.today() == (2, 95_924_250 + 360_505)


def test_clock_moves_before_the_trade_and_its_events_come_first() -> None:
    """add_trade with a later now expires first: expiry events precede the trade's own."""
    agg = Aggregator()
    agg.add_trade(make_trade("old", T0, ticker="A"), T0)
    events = default_view(agg.add_trade(make_trade("new", T0 + WINDOW, ticker="B"), T0 + WINDOW))
    kinds = [type(event) for event in events]
    assert kinds == [
        ClockTicked,
        WindowChanged,
        TopChanged,
        HotChanged,
        MarketAdded,
        TradeAdded,
        TopChanged,
        HotChanged,
    ]
    assert events[1] == WindowChanged(0, EMPTY_WINDOW)
    assert events[2] == TopChanged((), derivable=False)


def test_time_never_moves_backwards() -> None:
    """An earlier now than one already seen changes nothing; now_ms keeps the latest."""
    agg = Aggregator()
    agg.add_trade(make_trade("a", T0), T0 + WINDOW - 1)
    assert agg.advance(T0) == []
    assert agg.now_ms == T0 + WINDOW - 1
    assert agg.window(0).trades == 1


# -- duplicates, late and old trades -----------------------------------------------------------


def test_duplicate_trade_id_is_ignored() -> None:
    """A trade id seen before is not counted again; only the clock's events come back."""
    agg = Aggregator()
    trade = make_trade("a", T0)
    agg.add_trade(trade, T0)
    assert agg.add_trade(trade, T0) == []
    assert agg.add_trade(make_trade("a", T0, count=999), T0 + 1) == []
    assert agg.trades_total == 1
    assert agg.window(0).trades == 1
    assert default_view(agg.add_trade(trade, T0 + WINDOW)) == [
        ClockTicked(T0 + WINDOW),
        WindowChanged(0, EMPTY_WINDOW),
        TopChanged((), derivable=False),
        HotChanged(()),
    ]


def test_late_trade_inside_window_goes_to_its_place() -> None:
    """A backfilled trade still inside the window counts in it and sits in time order."""
    agg = Aggregator()
    first = make_trade("first", T0 + 2000)
    late = make_trade("late", T0 + 1000, count=300)
    agg.add_trade(first, T0 + 2000)
    events = agg.add_trade(late, T0 + 3000)
    assert not of_type(events, WindowChanged)
    assert agg.window(0).trades == 2
    assert agg.sparkline(0) == (late, first)
    assert agg.last_trade(0) == first
    assert agg.recent_trades(10) == (first, late)
    assert agg.top_trades() == (late, first)
    assert TopChanged((late, first), derivable=True) in events


def test_late_trade_outside_window_is_kept_but_corrects_naive_folders() -> None:
    """A trade older than the window is on the tape, sparkline, analytics and today, not in
    the window or top trades, and comes with WindowChanged + TopChanged(derivable=False)."""
    agg = Aggregator()
    recent = make_trade("recent", T0 + WINDOW)
    agg.add_trade(recent, T0 + WINDOW)
    late = make_trade("late", T0, count=10_000)
    events = default_view(agg.add_trade(late, T0 + WINDOW))
    window = agg.window(0)
    assert events == [
        TradeAdded(late, 0, window, 1),
        WindowChanged(0, window),
        TopChanged((recent,), derivable=False),
    ]
    assert window.trades == 1
    assert agg.top_trades() == (recent,)
    assert agg.sparkline(0) == (late, recent)
    assert agg.recent_trades(10) == (recent, late)
    assert agg.analytics("hour").buckets[-11] == (late.usd, 1)
    assert agg.analytics("day").total_trades == 2
    assert agg.today() == (1, recent.usd)  # now is midnight: the late trade was yesterday


def test_trade_older_than_the_retention_horizon_is_refused() -> None:
    """Trades before the day view's first hour are refused, even if the store has not seen
    them: nothing could show them."""
    agg = Aggregator()
    now = T0 + 30 * MINUTE_MS
    horizon = retention_start_ms(now, WINDOW)
    assert horizon == now // HOUR_MS * HOUR_MS - 23 * HOUR_MS
    assert agg.add_trade(make_trade("too-old", horizon - 1), now, absent_from_store=True) == []
    assert agg.trades_total == 0
    assert agg.markets_count() == 0
    assert of_type(agg.add_trade(make_trade("just-in", horizon), now, absent_from_store=True), TradeAdded)


def test_memory_is_bounded_by_the_horizons() -> None:
    """A day after a burst, ids, buckets, per-market trades and the markets themselves are
    forgotten (each announced once); a market still trading stays, and a forgotten ticker that
    trades again is a new market under a new id."""
    agg = Aggregator()
    for index in range(50):
        agg.add_trade(make_trade(f"t{index}", T0 + index, ticker=f"M{index % 5}"), T0 + index)
    agg.set_meta(MarketMeta("M0", title="Bitcoin"))
    assert agg.statistics().remembered_trade_ids == 50
    assert agg.statistics().market_history_trades == 50
    agg.add_trade(make_trade("busy", T0 + HOUR_MS, ticker="M4"), T0 + HOUR_MS)

    events = agg.advance(T0 + DAY_MS)
    forgotten = [event for event in events if isinstance(event, MarketForgotten)]
    assert forgotten == [MarketForgotten(m, f"M{m}") for m in range(4)]
    stats = agg.statistics()
    assert (stats.trades_in_window, stats.remembered_trade_ids) == (0, 0)
    assert (stats.market_history_trades, stats.tape_trades) == (1, 1)
    assert (stats.minute_buckets, stats.hour_buckets) == (0, 1)
    assert stats.markets == agg.markets_count() == 1
    assert agg.market_ids() == [4]
    assert agg.market_id("M0") is None
    assert not of_type(agg.advance(T0 + DAY_MS + 1), MarketForgotten)

    again = agg.add_trade(make_trade("back", T0 + DAY_MS + 2, ticker="M0"), T0 + DAY_MS + 2)
    assert of_type(again, MarketAdded) == [MarketAdded(5, "M0")]
    assert agg.meta(5) == MarketMeta("M0")
    assert agg.market_ids() == [4, 5]


def test_ids_are_remembered_for_the_dedup_horizon_only() -> None:
    """Ids go a whole minute at a time once the minute is older than the horizon, while the
    trades are still shown; a duplicate until then is refused on the ids alone."""
    agg = Aggregator(window_ms=HOUR_MS, dedup_horizon_ms=2 * MINUTE_MS)
    agg.add_trade(make_trade("a", T0), T0)
    agg.add_trade(make_trade("b", T0 + MINUTE_MS), T0 + MINUTE_MS)
    assert not of_type(agg.add_trade(make_trade("a", T0), T0 + 3 * MINUTE_MS - 1), TradeAdded)
    assert agg.statistics().remembered_trade_ids == 2

    agg.advance(T0 + 3 * MINUTE_MS)  # T0's minute is now older than the horizon
    assert agg.statistics().remembered_trade_ids == 1
    assert agg.statistics().trades_in_window == 2
    assert agg.needs_store_check(make_trade("a", T0), T0 + 3 * MINUTE_MS)
    assert not agg.needs_store_check(make_trade("b", T0 + MINUTE_MS), T0 + 3 * MINUTE_MS)


def test_a_trade_older_than_the_ids_counts_only_if_the_store_lacks_it() -> None:
    """Past the remembered ids only the store can tell a duplicate: without its word the trade
    is refused (counted nowhere), with it the trade is counted like any late trade."""
    agg = Aggregator(window_ms=HOUR_MS, dedup_horizon_ms=2 * MINUTE_MS)
    now = T0 + 30 * MINUTE_MS
    agg.advance(now)
    late = make_trade("late", now - 20 * MINUTE_MS)
    assert agg.needs_store_check(late, now)
    assert agg.add_trade(late, now) == []
    assert agg.trades_total == 0
    events = agg.add_trade(late, now, absent_from_store=True)
    assert of_type(events, TradeAdded)[0].trade == late
    assert agg.window(0).trades == 1
    assert agg.analytics("hour").total_trades == 1
    assert agg.statistics().remembered_trade_ids == 0  # the store has it now


def test_a_day_of_trades_leaves_only_what_the_views_need() -> None:
    """A day at one trade a second over 300 markets: the aggregator holds the window's trades,
    the ids of the dedup horizon, a bounded history per market and the tape, not the day."""
    agg = Aggregator(market_tape_size=20)
    now = T0
    for index in range(DAY_MS // 1000):
        now = T0 + index * 1000
        agg.add_trade(make_trade(f"d{index}", now, ticker=f"M{index * 7 % 300}"), now)
    stats = agg.statistics()
    assert agg.trades_total == DAY_MS // 1000
    assert stats.trades_in_window == WINDOW // 1000
    # Whole minutes from the horizon's start up to now.
    assert WINDOW // 1000 <= stats.remembered_trade_ids <= WINDOW // 1000 + 60
    assert stats.market_history_trades == 300 * 20
    assert stats.tape_trades == 200
    assert (stats.minute_buckets, stats.hour_buckets) == (60, 24)
    assert agg.analytics("day").total_trades == 23 * 3600 + (now % HOUR_MS) // 1000 + 1


# -- clock, analytics and today ----------------------------------------------------------------


def test_clock_ticks_on_each_new_minute_but_not_on_the_first_call() -> None:
    """ClockTicked carries the new minute's start, once per change, never at start-up."""
    agg = Aggregator()
    assert agg.advance(T0 + 59_999) == []
    assert agg.advance(T0 + 60_000) == [ClockTicked(T0 + 60_000)]
    assert agg.advance(T0 + 60_001) == []
    assert agg.advance(T0 + 5 * MINUTE_MS + 7) == [ClockTicked(T0 + 5 * MINUTE_MS)]


def test_minute_buckets_roll_at_the_exact_minute() -> None:
    """A trade at m-1 ms is in the previous minute, one at m in the current one."""
    agg = Aggregator()
    minute = T0 + MINUTE_MS
    agg.add_trade(make_trade("before", minute - 1, count=100), minute - 1)
    agg.add_trade(make_trade("at", minute, count=200), minute)
    hour = agg.analytics("hour")
    assert hour.bucket_ms == MINUTE_MS
    assert hour.first_bucket_ms == minute - 59 * MINUTE_MS
    assert len(hour.buckets) == 60
    assert hour.buckets[-2:] == ((500_000, 1), (1_000_000, 1))
    assert hour.current == (1_000_000, 1)
    assert (hour.total_usd, hour.total_trades) == (1_500_000, 2)
    assert (hour.peak_usd, hour.peak_trades) == (1_000_000, 1)

    agg.advance(minute + 59 * MINUTE_MS - 1)
    assert agg.analytics("hour").buckets[0] == (500_000, 1)
    agg.advance(minute + 59 * MINUTE_MS)
    assert agg.analytics("hour").buckets[0] == (1_000_000, 1)
    assert agg.analytics("hour").total_trades == 1


def test_hour_buckets_roll_at_the_exact_hour() -> None:
    """The day view is 24 hour buckets ending with the hour of now; it rolls at xx:00:00.000."""
    agg = Aggregator()
    agg.add_trade(make_trade("a", MIDNIGHT - 1), MIDNIGHT - 1)
    day = agg.analytics("day")
    assert (day.bucket_ms, len(day.buckets)) == (HOUR_MS, 24)
    assert day.first_bucket_ms == MIDNIGHT - 24 * HOUR_MS
    assert day.current == (500_000, 1)

    agg.advance(MIDNIGHT)
    day = agg.analytics("day")
    assert day.first_bucket_ms == MIDNIGHT - 23 * HOUR_MS
    assert day.current == (0, 0)
    assert day.buckets[-2] == (500_000, 1)
    agg.advance(MIDNIGHT + 23 * HOUR_MS)
    assert agg.analytics("day").total_trades == 0


def test_today_resets_at_utc_midnight() -> None:
    """Today counts trades timed on now's UTC date: 23:59:59.999 is yesterday after midnight."""
    agg = Aggregator()
    agg.add_trade(make_trade("late-evening", MIDNIGHT - 1), MIDNIGHT - 1)
    assert agg.today() == (1, 500_000)
    assert default_view(agg.advance(MIDNIGHT)) == [ClockTicked(MIDNIGHT)]
    assert agg.today() == (0, 0)
    agg.add_trade(make_trade("backfilled", MIDNIGHT - 2), MIDNIGHT + 1)
    agg.add_trade(make_trade("after", MIDNIGHT), MIDNIGHT + 1)
    assert agg.today() == (1, 500_000)


def test_future_trade_counts_when_its_minute_comes() -> None:
    """A trade timed after now (clock skew) is bucketed by its own time, not now's."""
    agg = Aggregator()
    agg.add_trade(make_trade("ahead", MIDNIGHT + 500), MIDNIGHT - 100)
    assert agg.analytics("hour").current == (0, 0)
    assert agg.today() == (0, 0)
    assert agg.window(0).trades == 1
    agg.advance(MIDNIGHT)
    assert agg.analytics("hour").current == (500_000, 1)
    assert agg.today() == (1, 500_000)


# -- hot markets and top trades ----------------------------------------------------------------


def test_hot_changed_only_when_membership_changes() -> None:
    """Re-ranking inside the hot set is silent (clients re-rank); entering or leaving is not."""
    agg = Aggregator(hot_size=2)
    assert of_type(
        default_view(agg.add_trade(make_trade("a1", T0, ticker="A", count=100), T0)), HotChanged
    ) == [HotChanged((0,))]
    assert of_type(
        default_view(agg.add_trade(make_trade("b1", T0, ticker="B", count=200), T0)), HotChanged
    ) == [HotChanged((1, 0))]
    assert not of_type(
        default_view(agg.add_trade(make_trade("a2", T0, ticker="A", count=200), T0)), HotChanged
    )
    assert agg.hot() == (0, 1)
    assert of_type(
        default_view(agg.add_trade(make_trade("c1", T0, ticker="C", count=250), T0)), HotChanged
    ) == [HotChanged((0, 2))]


def test_hot_ties_rank_by_ticker_and_zero_volume_is_not_hot() -> None:
    """Equal window $ volume ranks by ticker; a market with $0 in its window is never hot."""
    agg = Aggregator()
    agg.add_trade(make_trade("z", T0, ticker="Z"), T0)
    agg.add_trade(make_trade("a", T0, ticker="A"), T0)
    agg.add_trade(make_trade("free", T0, ticker="F", count=0), T0)
    assert agg.hot() == (1, 0)
    assert agg.active_markets() == 3


def test_top_trades_insert_and_expire_with_the_right_derivable_flag() -> None:
    """Entering the top is derivable; equal $ goes after earlier arrivals; expiry is not derivable."""
    agg = Aggregator(top_size=2)
    big = make_trade("big", T0, count=1000)
    equal = make_trade("equal", T0 + 1, count=1000)
    small = make_trade("small", T0 + 2, count=10)
    agg.add_trade(big, T0)
    assert TopChanged((big, equal), derivable=True) in agg.add_trade(equal, T0 + 1)
    assert not of_type(agg.add_trade(small, T0 + 2), TopChanged)
    assert agg.top_trades() == (big, equal)

    assert TopChanged((equal, small), derivable=False) in agg.advance(T0 + WINDOW)
    assert TopChanged((small,), derivable=False) in agg.advance(T0 + WINDOW + 1)
    assert not of_type(agg.advance(T0 + WINDOW + 1), TopChanged)


# -- sparkline, tapes, metadata ----------------------------------------------------------------


def test_sparkline_keeps_the_latest_n_and_drops_a_too_late_trade() -> None:
    """The sparkline is the latest N by (ts, arrival); a late trade older than all N is not in it."""
    agg = Aggregator(sparkline_len=3, market_tape_size=2)
    trades = [make_trade(f"t{index}", T0 + index * 1000) for index in range(4)]
    for trade in trades:
        agg.add_trade(trade, trade.ts_ms)
    assert agg.sparkline(0) == tuple(trades[1:])
    agg.add_trade(make_trade("too-late", T0 + 500), T0 + 5000)
    assert agg.sparkline(0) == tuple(trades[1:])
    same_time = make_trade("same-time", T0 + 2000)
    agg.add_trade(same_time, T0 + 5000)
    assert agg.sparkline(0) == (trades[2], same_time, trades[3])
    assert agg.market_trades(0, 10) == (trades[3], same_time)
    assert agg.market_trades(0, 1) == (trades[3],)


def test_tapes_are_newest_first_and_capped() -> None:
    """The tape and each market's tape list the latest trades, newest first, up to their sizes."""
    agg = Aggregator(tape_size=3, market_tape_size=2)
    trades = [make_trade(f"t{index}", T0 + index, ticker="AB"[index % 2]) for index in range(5)]
    for trade in trades:
        agg.add_trade(trade, T0 + 10)
    assert agg.recent_trades(100) == (trades[4], trades[3], trades[2])
    assert agg.recent_trades(2) == (trades[4], trades[3])
    assert agg.recent_trades(0) == ()
    assert agg.market_trades(0, 100) == (trades[4], trades[2])
    assert agg.market_trades(1, 100) == (trades[3], trades[1])


def test_set_meta_announces_only_changes() -> None:
    """set_meta creates an unknown market, then emits MetaChanged only for a different value."""
    agg = Aggregator()
    meta = MarketMeta("KXFED-24MAR", title="Fed decision", category="Economics", close_ts_ms=T0)
    assert agg.set_meta(meta) == [MarketAdded(0, meta.ticker), MetaChanged(0, meta)]
    assert agg.set_meta(meta) == []
    assert agg.set_meta(MarketMeta("KXFED-24MAR")) == [MetaChanged(0, MarketMeta("KXFED-24MAR"))]
    assert agg.set_meta(MarketMeta("NEW")) == [MarketAdded(1, "NEW")]
    assert agg.meta(1) == MarketMeta("NEW")


def test_settings_are_readable() -> None:
    """Clients are told the sizes and window they must fold the stream with."""
    agg = Aggregator(
        window_ms=60_000, sparkline_len=5, hot_size=6, top_size=7, tape_size=8, market_tape_size=9
    )
    assert (agg.window_ms, agg.sparkline_len, agg.hot_size) == (60_000, 5, 6)
    assert (agg.top_size, agg.tape_size, agg.market_tape_size) == (7, 8, 9)


def test_sizes_must_be_positive() -> None:
    """A zero or negative size is a configuration error that names the setting."""
    with pytest.raises(ConfigError, match="top_size"):
        Aggregator(top_size=0)


# -- properties ---------------------------------------------------------------------------------

SMALL = {
    "window_ms": 3 * MINUTE_MS,
    "sparkline_len": 4,
    "hot_size": 2,
    "top_size": 3,
    "tape_size": 6,
    "market_tape_size": 3,
    "dedup_horizon_ms": 4 * MINUTE_MS,
}
TICKERS = ("KXBTC-A", "KXBTC-B", "INX-C", "FED-D", "KXMVEX-S1-P")
TIME_STEPS = st.one_of(
    st.sampled_from([0, 1, 999, MINUTE_MS - 1, MINUTE_MS, SMALL["window_ms"], HOUR_MS, DAY_MS]),
    st.integers(0, 5000),
    st.integers(0, 2 * SMALL["window_ms"]),
)
TS_OFFSETS = st.one_of(
    st.sampled_from(
        [
            *(0, -1, 1, -SMALL["window_ms"] + 1, -SMALL["window_ms"]),
            *(-5 * MINUTE_MS, -HOUR_MS, -DAY_MS, -2 * DAY_MS),
        ]
    ),
    st.integers(-2 * SMALL["window_ms"], 2000),
)
NEW_TRADE = st.tuples(
    st.just("trade"),
    TIME_STEPS,
    st.sampled_from(TICKERS),
    st.sampled_from([1, 360_500, 500_000, 999_999]),  # $0.000001, $0.3605, $0.50, $0.999999
    st.sampled_from([0, 1, 150, 10_000]),
    st.sampled_from(["yes", "no"]),
    TS_OFFSETS,
    st.booleans(),  # asked the store (see apply)
)
OPERATIONS = st.lists(
    st.one_of(
        NEW_TRADE,
        NEW_TRADE,  # twice: trades are what most inputs are
        st.tuples(st.just("advance"), TIME_STEPS),
        st.tuples(st.just("duplicate"), TIME_STEPS, st.integers(0, 1000), st.booleans()),
        st.tuples(
            st.just("meta"),
            st.sampled_from(TICKERS),
            st.sampled_from(["", "Title"]),
            st.sampled_from(["", "KXBTC", "FED-EV"]),  # its event: by ticker, or one of another's
            st.sampled_from(["", "KXMVECOLL"]),  # a parlay by its metadata
        ),
    ),
    min_size=10,
    max_size=60,
)
Operation = tuple[Any, ...]
START = T0 - 5 * MINUTE_MS


def run(operations: list[Operation], *, future_trades_from: int = 0) -> Iterator[tuple[str, Any, int, bool]]:
    """Turn drawn operations into inputs: ("trade", Trade, now, ask_store), ("advance", None,
    now, False), ("meta", meta, now, False).

    Trades before index ``future_trades_from`` are never timed after now.
    """
    now = START
    made: list[Trade] = []
    for index, operation in enumerate(operations):
        kind = operation[0]
        if kind == "meta":
            _, ticker, title, event, collection = operation
            meta = MarketMeta(ticker, title=title, event_ticker=event, mve_collection_ticker=collection)
            yield "meta", meta, now, False
            continue
        now += operation[1]
        if kind == "advance":
            yield "advance", None, now, False
        elif kind == "duplicate":
            if made:
                yield "trade", made[operation[2] % len(made)], now, operation[3]
        else:
            _, _, ticker, yes_price, count, side, offset, ask_store = operation
            if index < future_trades_from:
                offset = min(offset, 0)
            trade = Trade(f"t{index}", ticker, yes_price, count, side, now + offset)
            made.append(trade)
            yield "trade", trade, now, ask_store


def apply(
    target: Aggregator | ReferenceAggregator,
    kind: str,
    value: Any,
    now: int,
    ask_store: bool = False,
    stored: set[str] | None = None,
) -> list[Event]:
    """One input. With ``ask_store``, a trade comes with the store's true answer, as the
    pipeline gives it: ``stored`` is every id accepted so far (the store's unique key)."""
    if kind == "trade":
        absent = ask_store and stored is not None and value.trade_id not in stored
        events = target.add_trade(value, now, absent_from_store=absent)
        if stored is not None and of_type(events, TradeAdded):
            stored.add(value.trade_id)
        return events
    if kind == "advance":
        return target.advance(now)
    return target.set_meta(value)


def reads(source: Aggregator | ReferenceAggregator) -> dict[str, Any]:
    markets = source.market_ids()
    return {
        "now": source.now_ms,
        "trades_total": source.trades_total,
        "tickers": [source.ticker(m) for m in markets],
        "ids": [source.market_id(source.ticker(m)) for m in markets],
        "metas": [source.meta(m) for m in markets],
        "windows": [source.window(m) for m in markets],
        "sparklines": [source.sparkline(m) for m in markets],
        "last_trades": [source.last_trade(m) for m in markets],
        "market_tapes": [(source.market_trades(m, 2), source.market_trades(m, 100)) for m in markets],
        "hot": source.hot(),
        "top": source.top_trades(),
        "hot_with_parlays": source.hot(parlays=True),
        "top_with_parlays": source.top_trades(parlays=True),
        "hot_events": (source.hot_events(), source.hot_events(parlays=True)),
        "tape": (source.recent_trades(4), source.recent_trades(1000)),
        "hour": source.analytics("hour"),
        "day": source.analytics("day"),
        "today": source.today(),
        "active": source.active_markets(),
        # Trader tools (flowboard.aggregate.alerts, flows, movers).
        "alerts": (source.alerts(), source.alerts(source.now_ms - 120_000, 3)),
        "flows": (source.flows(1000), source.flows(3, include_parlays=True)),
        "movers": [source.movers(period, 1000, include_parlays=True) for period in ("10m", "1h")],
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_every_read_and_event_matches_the_reference(operations: list[Operation]) -> None:
    """For random trades (late, future, duplicate, too old) and clock moves, the aggregator's
    events and every read equal a reference that recomputes everything from all trades."""
    agg = Aggregator(**SMALL)
    reference = ReferenceAggregator(**SMALL)
    stored: set[str] = set()
    for kind, value, now, ask_store in run(operations):
        # The store's answer as it is before this input, for both.
        known = set(stored)
        assert apply(agg, kind, value, now, ask_store, stored) == apply(
            reference, kind, value, now, ask_store, known
        )
        assert reads(agg) == reads(reference)


class FoldingClient:
    """A client that starts from a snapshot of the reads and then only folds events, the way
    the contract says: add every trade to its window, top list (unless its market is a parlay:
    this client shows the default view), sparkline, tapes and buckets; take WindowChanged and the
    default view's TopChanged / HotChanged as overrides; roll time on ClockTicked."""

    def __init__(self, agg: Aggregator, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.minute = agg.now_ms // MINUTE_MS * MINUTE_MS
        markets = agg.market_ids()
        # By market id: a forgotten market leaves, a new one gets the next id.
        self.tickers = {m: agg.ticker(m) for m in markets}
        self.metas = {m: agg.meta(m) for m in markets}
        self.windows = {m: agg.window(m) for m in markets}
        self.hot_members = set(agg.hot())
        # Snapshot trades get arrivals below every arrival still to come, in their given order.
        self.top = self._ranked(agg.top_trades())
        self.sparklines = {m: self._ranked(agg.sparkline(m)) for m in markets}
        self.market_tapes = {
            m: self._ranked(agg.market_trades(m, sizes["market_tape_size"])[::-1]) for m in markets
        }
        self.tape = self._ranked(agg.recent_trades(sizes["tape_size"])[::-1])
        self.buckets: dict[str, dict[int, list[int]]] = {}
        for mode in ("hour", "day"):
            view = agg.analytics(mode)
            self.buckets[mode] = {
                view.first_bucket_ms + index * view.bucket_ms: [usd, trades]
                for index, (usd, trades) in enumerate(view.buckets)
            }
        trades, usd = agg.today()
        self.days = {self.minute // DAY_MS * DAY_MS: [usd, trades]}

    @staticmethod
    def _ranked(trades: tuple[Trade, ...]) -> list[tuple[Trade, int]]:
        return [(trade, index - len(trades)) for index, trade in enumerate(trades)]

    def apply(self, event: Event) -> None:
        match event:
            case MarketAdded(market, ticker):
                assert market not in self.tickers and ticker not in self.tickers.values()
                self.tickers[market] = ticker
                self.metas[market] = MarketMeta(ticker)
                self.windows[market] = EMPTY_WINDOW
                self.sparklines[market] = []
                self.market_tapes[market] = []
            case MarketForgotten(market, ticker):
                assert self.tickers.pop(market) == ticker
                self.metas.pop(market)
                assert self.windows.pop(market) == EMPTY_WINDOW
                assert not self.sparklines.pop(market) and not self.market_tapes.pop(market)
            case TradeAdded(trade, market, _, arrival):
                self._fold_trade(trade, market, arrival)
            case WindowChanged(market, window):
                self.windows[market] = window
            case TopChanged(trades, _, False):
                self.top = self._ranked(trades)
            case HotChanged(markets, False):
                self.hot_members = set(markets)
            case MetaChanged(market, meta):
                self.metas[market] = meta
            case ClockTicked(minute_ms):
                self.minute = minute_ms
                forget_before = retention_start_ms(minute_ms, self.sizes["window_ms"])
                for latest in [self.tape, *self.sparklines.values(), *self.market_tapes.values()]:
                    latest[:] = [held for held in latest if held[0].ts_ms >= forget_before]

    def _fold_trade(self, trade: Trade, market: int, arrival: int) -> None:
        window = self.windows[market]
        yes = trade.count if trade.taker_side == "yes" else 0
        self.windows[market] = WindowStats(
            contracts=window.contracts + trade.count,
            usd=window.usd + trade.usd,
            trades=window.trades + 1,
            yes_flow=window.yes_flow + yes,
            no_flow=window.no_flow + trade.count - yes,
        )
        if not is_parlay(trade.ticker, self.metas[market]):
            self.top = sorted([*self.top, (trade, arrival)], key=lambda held: (-held[0].usd, held[1]))
            self.top = self.top[: self.sizes["top_size"]]
        for trades, size in (
            (self.tape, self.sizes["tape_size"]),
            (self.sparklines[market], self.sizes["sparkline_len"]),
            (self.market_tapes[market], self.sizes["market_tape_size"]),
        ):
            trades.append((trade, arrival))
            trades.sort(key=lambda held: (held[0].ts_ms, held[1]))
            del trades[:-size]
        for mode, bucket_ms in (("hour", MINUTE_MS), ("day", HOUR_MS)):
            bucket = self.buckets[mode].setdefault(trade.ts_ms // bucket_ms * bucket_ms, [0, 0])
            bucket[0] += trade.usd
            bucket[1] += 1
        day = self.days.setdefault(trade.ts_ms // DAY_MS * DAY_MS, [0, 0])
        day[0] += trade.usd
        day[1] += 1

    def analytics(self, mode: Literal["hour", "day"]) -> tuple[tuple[int, int], ...]:
        bucket_ms, count = (MINUTE_MS, 60) if mode == "hour" else (HOUR_MS, 24)
        first = self.minute // bucket_ms * bucket_ms - (count - 1) * bucket_ms
        buckets = [self.buckets[mode].get(first + index * bucket_ms, [0, 0]) for index in range(count)]
        return tuple((usd, trades) for usd, trades in buckets)

    def reads(self) -> dict[str, Any]:
        usd, trades = self.days.get(self.minute // DAY_MS * DAY_MS, [0, 0])
        markets = sorted(self.tickers)
        return {
            "windows": [self.windows[m] for m in markets],
            "hot": tuple(sorted(self.hot_members, key=lambda m: (-self.windows[m].usd, self.tickers[m]))),
            "top": tuple(trade for trade, _ in self.top),
            "sparklines": [tuple(trade for trade, _ in self.sparklines[m]) for m in markets],
            "market_tapes": [tuple(trade for trade, _ in reversed(self.market_tapes[m])) for m in markets],
            "tape": tuple(trade for trade, _ in reversed(self.tape)),
            "hour": self.analytics("hour"),
            "day": self.analytics("day"),
            "today": (trades, usd),
        }


def folded_reads(agg: Aggregator, sizes: dict[str, int]) -> dict[str, Any]:
    markets = agg.market_ids()
    return {
        "windows": [agg.window(m) for m in markets],
        "hot": agg.hot(),
        "top": agg.top_trades(),
        "sparklines": [agg.sparkline(m) for m in markets],
        "market_tapes": [agg.market_trades(m, sizes["market_tape_size"]) for m in markets],
        "tape": agg.recent_trades(sizes["tape_size"]),
        "hour": agg.analytics("hour").buckets,
        "day": agg.analytics("day").buckets,
        "today": agg.today(),
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS, st.integers(0, 60))
def test_folding_the_events_keeps_a_client_equal_to_the_aggregator(
    operations: list[Operation], snapshot_at: int
) -> None:
    """A client that takes a snapshot of the reads and then folds the events naively (adding
    every TradeAdded, overriding with WindowChanged/TopChanged/HotChanged, rolling on
    ClockTicked) shows the same windows, hot ranking, top trades, sparklines, tapes,
    analytics and today as the aggregator after every input.

    Trades timed after now are only drawn after the snapshot: a snapshot cannot carry a
    bucket that is not in a view yet (see the report on future-timed trades)."""
    agg = Aggregator(**SMALL)
    agg.advance(START)  # a snapshot says what time it is only once the clock runs
    client: FoldingClient | None = None
    stored: set[str] = set()
    for index, (kind, value, now, ask_store) in enumerate(run(operations, future_trades_from=snapshot_at)):
        if index == snapshot_at:
            client = FoldingClient(agg, SMALL)
        events = apply(agg, kind, value, now, ask_store, stored)
        if client is not None:
            for event in events:
                client.apply(event)
            assert client.reads() == folded_reads(agg, SMALL)


# -- cost ----------------------------------------------------------------------------------------


def calls_per_trade(trades_in_window: int) -> float:
    """Python and C calls made per add_trade (one trade enters, one expires) in steady state."""
    agg = Aggregator(window_ms=trades_in_window)
    for index in range(trades_in_window):
        agg.add_trade(make_trade(f"fill{index}", T0 + index, ticker=f"M{index % 50}"), T0 + index)
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    measured = 200
    sys.setprofile(count)
    try:
        for index in range(measured):
            now = T0 + trades_in_window + index
            agg.add_trade(make_trade(f"new{index}", now, ticker=f"M{index % 50}"), now)
    finally:
        sys.setprofile(None)
    assert agg.statistics().trades_in_window == trades_in_window
    return calls / measured


def test_per_trade_work_does_not_grow_with_the_window() -> None:
    """Counting calls, not time: a window holding 100x more trades costs about the same per trade
    (sorted-list inserts and front pops are O(log n); nothing rescans the window)."""
    small, large = calls_per_trade(400), calls_per_trade(40_000)
    assert large < small * 1.3


# -- parlays and hot events ------------------------------------------------------------------------


def test_parlays_are_left_out_of_the_default_hot_markets_and_top_trades() -> None:
    """A KXMVE market's trades count in its window, the tape and analytics, but its market is hot
    and its trades are top trades only in the view with parlays."""
    agg = Aggregator()
    parlay = make_trade("p", T0, ticker="KXMVESPORTS-S2025ABC-DEF", count=100_000)
    plain = make_trade("a", T0, ticker="KXBTC-24MAR10-B70000")
    events = agg.add_trade(parlay, T0)
    assert TopChanged((parlay,), derivable=True, parlays=True) in events
    assert HotChanged((0,), parlays=True) in events
    assert not [e for e in events if isinstance(e, TopChanged | HotChanged) and not e.parlays]
    agg.add_trade(plain, T0)
    assert (agg.hot(), agg.hot(parlays=True)) == ((1,), (0, 1))
    assert (agg.top_trades(), agg.top_trades(parlays=True)) == ((plain,), (parlay, plain))
    assert agg.window(0).trades == 1 and agg.recent_trades(5) == (plain, parlay)
    assert agg.is_parlay(0) and not agg.is_parlay(1)


def test_metadata_naming_a_collection_moves_a_market_out_of_the_default_rankings() -> None:
    """A market whose ticker does not say so becomes a parlay when its metadata names a
    multivariate collection: the default rankings drop it at once (non-derivable events)."""
    agg = Aggregator()
    trade = make_trade("a", T0, ticker="KXODD-1")
    agg.add_trade(trade, T0)
    meta = MarketMeta("KXODD-1", mve_collection_ticker="KXMVECROSSCATEGORY")
    assert agg.set_meta(meta) == [MetaChanged(0, meta), TopChanged((), derivable=False), HotChanged(())]
    assert agg.hot(parlays=True) == (0,) and agg.top_trades(parlays=True) == (trade,)
    assert agg.set_meta(MarketMeta("KXODD-1"))[1:] == [
        TopChanged((trade,), derivable=False),
        HotChanged((0,)),
    ]


def test_hot_events_never_name_a_market_forgotten_when_a_trade_jumps_the_clock() -> None:
    """Between two rankings a trade can move the clock past a day (a fast replay): the markets
    quiet since are forgotten, and the hot events are ranked again at once rather than keep
    naming ids that no longer resolve (the API and the stream would fail on them)."""
    agg = Aggregator()
    agg.add_trade(make_trade("a1", T0, ticker="KXBTCD-25DEC3117-T1"), T0)
    agg.advance(T0 + 1000)
    assert [event.event_ticker for event in agg.hot_events()] == ["KXBTCD-25DEC3117"]
    later = T0 + 2 * DAY_MS
    events = agg.add_trade(make_trade("b1", later, ticker="KXFED-26MAR-T4.25"), later)
    assert agg.market_id("KXBTCD-25DEC3117-T1") is None
    assert HotEventsChanged(()) in events
    for parlays in (False, True):
        for event in agg.hot_events(parlays):
            for member in event.markets:
                agg.ticker(member.market)


def test_hot_events_sum_their_markets_and_are_ranked_once_a_second() -> None:
    """Events rank by the $ volume of their markets' windows (ties by event ticker), list their
    busiest markets with their last price, leave parlays out by default, and change only when
    the clock (``advance``) reaches a new second."""
    agg = Aggregator()
    a1 = make_trade("a1", T0, ticker="KXBTCD-25DEC3117-T1", yes_price=400_000, count=300)
    a2 = make_trade("a2", T0, ticker="KXBTCD-25DEC3117-T2", yes_price=600_000, count=300, side="no")
    b1 = make_trade("b1", T0, ticker="KXFED-26MAR-T4.25", yes_price=999_999, count=300)
    p1 = make_trade("p1", T0, ticker="KXMVEX-S1-P", yes_price=10_000, count=10**7)
    for trade in (a1, a2, b1, p1):
        agg.add_trade(trade, T0)
    assert agg.hot_events() == ()  # not ranked yet: trades never rank them, the clock does
    agg.advance(T0 + 999)
    late = make_trade("b2", T0 + 999, ticker="KXFED-26MAR-T4.25", count=1)
    agg.add_trade(late, T0 + 999)
    assert not of_type(agg.advance(T0 + 999), HotEventsChanged)  # ranked at T0 + 999 already
    events = agg.advance(T0 + 1000)
    btc = HotEvent(
        "KXBTCD-25DEC3117",
        usd=a1.usd + a2.usd,
        trades=2,
        contracts=600,
        market_count=2,
        markets=(EventMarket(0, a1.usd, 400_000), EventMarket(1, a2.usd, 600_000)),
    )
    assert a1.usd == a2.usd  # equal $: the markets rank by ticker
    fed_usd = b1.usd + late.usd
    fed = HotEvent("KXFED-26MAR", fed_usd, 2, 301, 1, (EventMarket(2, fed_usd, 5000),))
    assert b1.usd > btc.usd
    parlay = HotEvent("KXMVEX-S1", p1.usd, 1, 10**7, 1, (EventMarket(3, p1.usd, 10_000),))
    assert of_type(events, HotEventsChanged) == [
        HotEventsChanged((fed, btc)),
        HotEventsChanged((parlay, fed, btc), parlays=True),
    ]
    assert agg.hot_events() == (fed, btc)
    assert agg.advance(T0 + 2000) == []  # nothing changed: nothing said

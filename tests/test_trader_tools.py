"""Trader tools (issue 12 items 1-3): whale and accumulation alerts, flows, movers.

Pure core at its exact edges and against the reference aggregator; the v2 channels through
the real session and both decoders; the store across a restart on both backends (alerts
exactly once); the HTTP API through the real app.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from reference_aggregator import ReferenceAggregator

# Fixtures of the store suite: each test taking db_url runs on SQLite and on PostgreSQL.
from test_store import db_url, postgres_url, running_store, wait_until  # noqa: F401

from flowboard.aggregate.aggregator import Aggregator
from flowboard.aggregate.alerts import Alert
from flowboard.aggregate.events import AlertRaised, Event, FlowsChanged, MoversChanged, TradeAdded
from flowboard.aggregate.flows import vwap
from flowboard.aggregate.movers import change_bp
from flowboard.config import Config
from flowboard.model import MINUTE_MS, ONE_DOLLAR, USD_SCALE, MarketMeta, Side, Trade
from flowboard.protocol import v2
from flowboard.protocol.decoder import ViewState, expected_summary
from flowboard.protocol.session import SessionLimits
from flowboard.server.app import create_app
from flowboard.server.hub import Hub
from flowboard.server.metrics import Metrics
from flowboard.server.pipeline import Ingestor, _rebuild
from flowboard.server.runtime import Runtime

T0 = 1_795_823_880_000  # 2026-11-27 23:58 UTC
DOLLAR = USD_SCALE  # $1 in usd units
CENT = ONE_DOLLAR // 100  # 1 cent in price units


def trade(
    trade_id: str,
    ts_ms: int,
    *,
    ticker: str = "KXA-1",
    price: int = 50 * CENT,
    count: int = 100,
    side: Side = "yes",
) -> Trade:
    return Trade(trade_id, ticker, price, count, side, ts_ms)


def alerts_in(events: list[Event]) -> list[Alert]:
    return [event.alert for event in events if isinstance(event, AlertRaised)]


# -- whale alerts ------------------------------------------------------------------------------


def test_a_whale_alert_fires_at_exactly_the_floor_and_not_a_unit_below() -> None:
    """$1,000.00 exactly (fractional count x sub-cent price) is a whale; one usd unit less is not."""
    agg = Aggregator()
    exact = trade("w1", T0, price=250_000, count=400_000)  # 4,000 contracts x $0.25 = $1,000
    assert exact.usd == 1_000 * DOLLAR
    (alert,) = alerts_in(agg.add_trade(exact, T0))
    assert (alert.kind, alert.usd, alert.contracts, alert.trades, alert.alert_id) == (
        "whale",
        1_000 * DOLLAR,
        400_000,
        1,
        "whale:w1",
    )
    # 1,948.41 contracts at $0.513239: $999.99999999, one usd unit below.
    below = trade("w2", T0, ticker="KXB-2", price=513_239, count=194_841)
    assert below.usd == 1_000 * DOLLAR - 1
    assert alerts_in(agg.add_trade(below, T0)) == []
    # A NO taker pays $1 - YES price: YES $0.75 for a NO taker is $0.25 a contract.
    no_side = trade("w3", T0, ticker="KXC-3", price=750_000, count=400_000, side="no")
    assert [a.kind for a in alerts_in(agg.add_trade(no_side, T0))] == ["whale"]


def test_the_floor_is_a_setting() -> None:
    """A server started with a higher floor raises no alert for a trade below it."""
    agg = Aggregator(whale_usd=5_000 * DOLLAR)
    assert alerts_in(agg.add_trade(trade("a", T0, price=ONE_DOLLAR // 2, count=900_000), T0)) == []
    assert (
        len(
            alerts_in(
                agg.add_trade(trade("b", T0, ticker="KXB-2", price=ONE_DOLLAR // 2, count=1_000_000), T0)
            )
        )
        == 1
    )


# -- accumulation alerts -----------------------------------------------------------------------

#: $100 per trade (200 contracts at $0.50), below the whale floor.
HUNDRED = {"price": ONE_DOLLAR // 2, "count": 20_000}


def test_accumulation_fires_once_on_the_crossing_trade_and_rearms_only_below_the_threshold() -> None:
    """$5,000 within 5 min on one side: fires on the 50th $100 trade, not on the 51st..; once the
    oldest trades age out (at exactly t + 5 min) and the run falls below, the next crossing fires."""
    agg = Aggregator()
    fired: list[tuple[int, Alert]] = []
    for i in range(60):
        now = T0 + i * 1_000
        for alert in alerts_in(agg.add_trade(trade(f"a{i}", now, **HUNDRED), now)):
            fired.append((i, alert))
    assert [(i, a.kind, a.usd, a.trades) for i, a in fired] == [(49, "accumulation", 5_000 * DOLLAR, 50)]
    assert fired[0][1].first_ts_ms == T0
    assert fired[0][1].contracts == 50 * 20_000

    # Trade i is at T0 + i s. At T0 + 5 min + 9 s the run is trades 10..59: $5,000, not below the
    # threshold, so one more does not fire.
    now = T0 + 5 * MINUTE_MS + 9_000
    assert alerts_in(agg.add_trade(trade("b0", now, **HUNDRED), now)) == []
    # At T0 + 5 min + 11 s trades 0..11 have left: 48 + b0 = $4,900, below; the next one crosses.
    now = T0 + 5 * MINUTE_MS + 11_000
    (again,) = alerts_in(agg.add_trade(trade("b1", now, **HUNDRED), now))
    assert (again.kind, again.usd, again.trades, again.first_ts_ms) == (
        "accumulation",
        5_000 * DOLLAR,
        50,
        T0 + 12_000,
    )


def test_accumulation_window_edge_is_exact() -> None:
    """A run of two $2,500 trades fires when the first is 5 min - 1 ms old, not when it is 5 min old."""
    big = {"price": ONE_DOLLAR // 2, "count": 500_000}  # $2,500: a whale as well
    inside = Aggregator()
    inside.add_trade(trade("x1", T0, **big), T0)
    later = T0 + 5 * MINUTE_MS - 1
    kinds = [a.kind for a in alerts_in(inside.add_trade(trade("x2", later, **big), later))]
    assert kinds == ["whale", "accumulation"]

    outside = Aggregator()
    outside.add_trade(trade("x1", T0, **big), T0)
    later = T0 + 5 * MINUTE_MS
    kinds = [a.kind for a in alerts_in(outside.add_trade(trade("x2", later, **big), later))]
    assert kinds == ["whale"]


def test_a_single_trade_and_the_other_side_are_not_an_accumulation() -> None:
    """One $6,000 trade is a whale only; NO-taker trades do not add to a YES run."""
    agg = Aggregator()
    alerts = alerts_in(agg.add_trade(trade("s1", T0, price=ONE_DOLLAR // 2, count=1_200_000), T0))
    assert [a.kind for a in alerts] == ["whale"]
    for i in range(49):
        assert alerts_in(agg.add_trade(trade(f"y{i}", T0 + i, ticker="KXB-2", **HUNDRED), T0 + i)) == []
    # $100 on the NO side (YES price $0.50): its own run.
    assert alerts_in(agg.add_trade(trade("n1", T0 + 50, ticker="KXB-2", side="no", **HUNDRED), T0 + 50)) == []
    (alert,) = alerts_in(agg.add_trade(trade("y49", T0 + 51, ticker="KXB-2", **HUNDRED), T0 + 51))
    assert (alert.kind, alert.trade.taker_side, alert.trades) == ("accumulation", "yes", 50)


def test_parlays_raise_no_alerts_and_are_left_out_of_flows_and_movers_by_default() -> None:
    """A KXMVE ticker, or a market whose metadata names a collection, raises nothing and is only
    listed with include_parlays."""
    agg = Aggregator()
    agg.set_meta(MarketMeta("KXSPORTS-1", mve_collection_ticker="KXMVECOLL"))
    whale = {"price": ONE_DOLLAR // 2, "count": 1_000_000}
    assert alerts_in(agg.add_trade(trade("p1", T0, ticker="KXMVESPORTS-A", **whale), T0)) == []
    assert alerts_in(agg.add_trade(trade("p2", T0, ticker="KXSPORTS-1", **whale), T0)) == []
    agg.add_trade(trade("p3", T0 + 1, ticker="KXSPORTS-1", price=ONE_DOLLAR // 4, count=1_000_000), T0 + 1)
    assert agg.flows(10) == ()
    assert {agg.ticker(f.market) for f in agg.flows(10, include_parlays=True)} == {
        "KXMVESPORTS-A",
        "KXSPORTS-1",
    }
    assert agg.movers("10m", 10) == ()
    assert [agg.ticker(m.market) for m in agg.movers("10m", 10, include_parlays=True)] == ["KXSPORTS-1"]


# -- against the reference ---------------------------------------------------------------------

#: Small thresholds so that random trades cross them often.
SMALL_ALERTS = {"whale_usd": 60 * DOLLAR, "accumulation_usd": 150 * DOLLAR, "accumulation_ms": 2 * MINUTE_MS}
SMALL_MOVERS = {"movers_min_usd": 20 * DOLLAR}
TICKERS = ("KXA-1", "KXB-2", "KXMVECROSS-3")

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("trade"),
            st.sampled_from(TICKERS),
            st.sampled_from([1, 5_050, 365_050, 500_000, 999_999]),  # $0.000001 .. $0.999999
            st.sampled_from([1, 33, 2_000, 10_001]),  # 0.01 .. 100.01 contracts
            st.sampled_from(["yes", "no"]),
            st.sampled_from([0, 0, -1, -30_000, -2 * MINUTE_MS, -10 * MINUTE_MS, -61 * MINUTE_MS, 500]),
        ),
        st.tuples(
            st.just("advance"), st.sampled_from([1, 999, 30_000, 2 * MINUTE_MS, 10 * MINUTE_MS, 3_600_000])
        ),
        st.tuples(st.just("meta"), st.sampled_from(TICKERS[:2]), st.sampled_from(["", "KXMVECOLL"])),
    ),
    min_size=5,
    max_size=60,
)


def trader_reads(source: Aggregator | ReferenceAggregator) -> dict[str, Any]:
    return {
        "alerts": source.alerts(),
        "flows": (source.flows(1000), source.flows(1000, include_parlays=True)),
        "movers": [
            source.movers(p, 1000, include_parlays=parlays)
            for p in ("10m", "1h")
            for parlays in (False, True)
        ],
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_alerts_flows_and_movers_match_the_reference(operations: list[tuple[Any, ...]]) -> None:
    """For random trades (late, ahead of the clock, fractional, sub-cent, parlay) and clock moves,
    every alert event and every flow, mover and alert read equals the from-scratch reference."""
    sizes = {**SMALL_ALERTS, **SMALL_MOVERS}
    agg = Aggregator(**sizes)
    reference = ReferenceAggregator(**sizes)
    now = T0
    for number, operation in enumerate(operations):
        if operation[0] == "trade":
            _, ticker, price, count, side, offset = operation
            new = Trade(f"r{number}", ticker, price, count, side, now + offset)
            got, want = agg.add_trade(new, now), reference.add_trade(new, now)
            assert alerts_in(got) == alerts_in(want)
            assert [type(e) for e in got if isinstance(e, TradeAdded)] == [
                type(e) for e in want if isinstance(e, TradeAdded)
            ]
        elif operation[0] == "advance":
            now += operation[1]
            agg.advance(now)
            reference.advance(now)
        else:
            meta = MarketMeta(operation[1], mve_collection_ticker=operation[2])
            agg.set_meta(meta)
            reference.set_meta(meta)
        assert trader_reads(agg) == trader_reads(reference)


# -- flows -------------------------------------------------------------------------------------


def test_vwap_is_exact_and_rounds_half_up() -> None:
    """VWAP = usd / contracts in price units, to the nearest unit, halves up: fractional counts and
    sub-cent prices included; a NO flow's VWAP is the NO price paid."""
    agg = Aggregator()
    # 0.01 contract at $0.000001 and 0.02 at $0.000002: exact mean 5/3 units -> 2.
    agg.add_trade(trade("v1", T0, price=1, count=1), T0)
    agg.add_trade(trade("v2", T0, price=2, count=2), T0)
    # Half a unit: 0.01 at $0.000001 and 0.01 at $0.000002 -> 1.5 -> 2 (up).
    agg.add_trade(trade("v3", T0, ticker="KXB-2", price=1, count=1), T0)
    agg.add_trade(trade("v4", T0, ticker="KXB-2", price=2, count=1), T0)
    # NO takers at YES $0.36505 (pays $0.63495) for 3.47 and YES $0.4 (pays $0.6) for 1.
    agg.add_trade(trade("v5", T0, ticker="KXC-3", price=365_050, count=347, side="no"), T0)
    agg.add_trade(trade("v6", T0, ticker="KXC-3", price=400_000, count=100, side="no"), T0)
    flows = {(agg.ticker(f.market), f.side): f for f in agg.flows(10)}
    assert flows["KXA-1", "yes"].vwap == 2
    assert flows["KXB-2", "yes"].vwap == 2
    no_flow = flows["KXC-3", "no"]
    assert (no_flow.usd, no_flow.contracts, no_flow.trades) == (347 * 634_950 + 100 * 600_000, 447, 2)
    # (220,327,650 + 60,000,000) / 447 = 627,131.43... -> 627,131
    assert no_flow.vwap == 627_131
    assert vwap(3, 2) == 2 and vwap(5, 2) == 3 and vwap(4, 3) == 1 and vwap(0, 0) == 0
    # Largest notional first.
    assert [agg.ticker(f.market) for f in agg.flows(10)] == ["KXC-3", "KXA-1", "KXB-2"]


def test_flows_leave_with_the_window() -> None:
    """A flow counts the trades of the 10-minute window: gone at exactly t + 10 min."""
    agg = Aggregator()
    agg.add_trade(trade("f1", T0), T0)
    agg.advance(T0 + 10 * MINUTE_MS - 1)
    assert len(agg.flows(10)) == 1
    agg.advance(T0 + 10 * MINUTE_MS)
    assert agg.flows(10) == ()


# -- movers ------------------------------------------------------------------------------------


def test_movers_across_the_window_boundary() -> None:
    """First and last price of each period: a trade at t counts in "10m" until t + 10 min - 1 ms,
    in "1h" until t + 1 h - 1 ms; the change in price units and hundredths of a percent."""
    agg = Aggregator()
    volume = {"count": 100_000}  # 1,000 contracts: over the $100 minimum at any price >= $0.10
    agg.add_trade(trade("m1", T0, price=40 * CENT, **volume), T0)
    agg.add_trade(trade("m2", T0 + 5 * MINUTE_MS, price=50 * CENT, **volume), T0 + 5 * MINUTE_MS)
    agg.add_trade(trade("m3", T0 + 9 * MINUTE_MS, price=45 * CENT, **volume), T0 + 9 * MINUTE_MS)

    agg.advance(T0 + 10 * MINUTE_MS - 1)
    (move,) = agg.movers("10m", 10)
    assert (move.first_price, move.last_price, move.change, move.change_bp) == (
        400_000,
        450_000,
        50_000,
        1250,
    )
    agg.advance(T0 + 10 * MINUTE_MS)
    (move,) = agg.movers("10m", 10)
    assert (move.first_price, move.change, move.change_bp) == (500_000, -50_000, -1000)
    (hourly,) = agg.movers("1h", 10)
    assert (hourly.first_price, hourly.last_price, hourly.trades) == (400_000, 450_000, 3)
    agg.advance(T0 + 60 * MINUTE_MS)
    assert agg.movers("1h", 10)[0].first_price == 500_000
    agg.advance(T0 + 69 * MINUTE_MS)
    assert agg.movers("1h", 10) == (), "one trade left: no change"


def test_movers_need_the_minimum_volume_and_a_change() -> None:
    """Under $100 in the period, or no change, is not a mover; rank by size of the change."""
    agg = Aggregator()
    tiny = {"count": 100}  # 1 contract
    agg.add_trade(trade("a1", T0, ticker="KXA-1", price=10 * CENT, **tiny), T0)
    agg.add_trade(trade("a2", T0, ticker="KXA-1", price=90 * CENT, **tiny), T0)
    big = {"count": 100_000}
    agg.add_trade(trade("b1", T0, ticker="KXB-2", price=50 * CENT, **big), T0)
    agg.add_trade(trade("b2", T0, ticker="KXB-2", price=50 * CENT, **big), T0)
    agg.add_trade(trade("c1", T0, ticker="KXC-3", price=50 * CENT, **big), T0)
    agg.add_trade(trade("c2", T0, ticker="KXC-3", price=49 * CENT, **big), T0)
    agg.add_trade(trade("d1", T0, ticker="KXD-4", price=20 * CENT, **big), T0)
    agg.add_trade(trade("d2", T0, ticker="KXD-4", price=23 * CENT, **big), T0)
    assert [agg.ticker(m.market) for m in agg.movers("10m", 10)] == ["KXD-4", "KXC-3"]
    assert change_bp(3, 4) == 3333 and change_bp(3, 2) == -3333 and change_bp(8, 9) == 1250
    assert change_bp(20_000, 20_001) == 1 and change_bp(20_000, 19_999) == -1  # 0.5 bp: away from 0
    assert change_bp(200_000, 200_001) == 0  # 0.05 bp
    assert change_bp(0, 5) is None


# -- published lists and the v2 channels -------------------------------------------------------


def test_lists_are_published_at_most_once_a_second_and_only_when_changed() -> None:
    """With lists_period_ms, FlowsChanged/MoversChanged come on whole seconds of the clock and
    only when the list differs from the last one announced."""
    agg = Aggregator(lists_period_ms=1_000)
    agg.advance(T0)

    def lists(events: list[Event]) -> list[type]:
        return [type(e) for e in events if isinstance(e, FlowsChanged | MoversChanged)]

    assert lists(agg.add_trade(trade("l1", T0 + 10), T0 + 10)) == []
    assert lists(agg.add_trade(trade("l2", T0 + 20, price=60 * CENT), T0 + 20)) == []
    assert lists(agg.advance(T0 + 1_000)) == [FlowsChanged]
    assert lists(agg.advance(T0 + 2_000)) == [], "nothing changed"
    agg.add_trade(trade("l3", T0 + 2_500, count=100_000, price=70 * CENT), T0 + 2_500)
    assert lists(agg.advance(T0 + 2_999)) == []
    assert lists(agg.advance(T0 + 3_000)) == [FlowsChanged, MoversChanged, MoversChanged]
    assert agg.published_flows()[0].usd == 70_110 * DOLLAR // 100  # $0.50 + $0.60 + $700


def drive(agg: Aggregator, hub: Hub, operations: list[tuple[str, int, int, int, Side]], now: int) -> int:
    for number, (ticker_index, price, count, step, side) in enumerate(operations):
        now += step
        new = Trade(f"h{number}", TICKERS[ticker_index % 2], price, count, side, now)
        hub.publish(agg.add_trade(new, now), now)
        hub.publish(agg.advance(now + 1), now + 1)
    return now


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1),
            st.sampled_from([10 * CENT, 55 * CENT, 365_050]),
            st.sampled_from([347, 20_000, 300_000]),
            st.sampled_from([0, 400, 1_000, 70_000]),
            st.sampled_from(["yes", "no"]),
        ),
        max_size=40,
    ),
    st.integers(0, 40),
)
def test_a_trader_client_folds_to_the_servers_alerts_flows_and_movers(
    operations: list[tuple[str, int, int, int, Side]], read_every: int
) -> None:
    """A client of the trader channels alone, reading every few inputs (so frames conflate),
    holds exactly the server's alerts, published flows and movers; a default-view client at the
    same time receives no A/F/M event at all."""
    agg = Aggregator(**SMALL_ALERTS, lists_period_ms=1_000)
    hub = Hub(agg, epoch="e1", ring_size=10_000, limits=SessionLimits())
    now = T0
    hub.publish(agg.advance(now), now)
    trader = hub.connect(channels=frozenset(v2.TRADER_CHANNELS), detail=None, resume=None, now_ms=now)
    default = hub.connect(channels=v2.DEFAULT_CHANNELS, detail=None, resume=None, now_ms=now)
    view = ViewState()
    default_codes: set[str] = set()
    for start in range(0, len(operations) + 1, max(1, read_every)):
        now = drive(agg, hub, operations[start : start + max(1, read_every)], now)
        for client in (trader, default):
            while (frame := client.session.build_frame(agg, now)) is not None:
                if client is trader:
                    view.apply_frame(frame.payload)
                else:
                    default_codes.update(event[0] for event in orjson.loads(frame.payload)[1:])
    summary = view.summary()
    summary.pop("seq")
    assert summary == expected_summary(
        agg, channels=trader.session.channels, detail=None, tape_len=0, detail_len=0
    )
    assert not default_codes & {"A", "F", "M"}


def test_channels_are_opt_in_and_validated() -> None:
    """The trader channels are not in the default set; a subscription names them; typos are refused."""
    assert not v2.DEFAULT_CHANNELS & set(v2.TRADER_CHANNELS)
    assert v2.parse_command('{"op":"sub","ch":["alerts","flows","movers"]}') == v2.Subscribe(
        frozenset({"alerts", "flows", "movers"})
    )
    with pytest.raises(v2.ProtocolError, match="unknown channel"):
        v2.parse_command('{"op":"sub","ch":["alert"]}')


def test_a_restored_alert_of_a_market_not_held_is_not_streamed() -> None:
    """After a restart, stored alerts may name markets with no trade in the restored day (or
    forgotten since): an alerts snapshot leaves them out instead of failing, and keeps the others."""
    agg = Aggregator(lists_period_ms=1_000)
    hub = Hub(agg, epoch="e1", ring_size=1_000, limits=SessionLimits())
    hub.publish(agg.advance(T0), T0)
    hub.publish(agg.add_trade(trade("s1", T0 + 1, count=400_000, price=ONE_DOLLAR // 2), T0 + 1), T0 + 1)
    quiet = Alert("whale", trade("old", T0 - 2 * MINUTE_MS, ticker="KXQUIET-1"), 10**12, 400_000, 1, T0)
    agg.restore_alerts([quiet])
    client = hub.connect(channels=frozenset({"alerts"}), detail=None, resume=None, now_ms=T0 + 2)
    frame = client.session.build_frame(agg, T0 + 2)
    assert frame is not None
    view = ViewState()
    view.apply_frame(frame.payload)
    assert [row[0] for row in view.summary()["alerts"]] == [agg.alerts(limit=10)[0].trade.ticker]
    assert len(agg.alerts(limit=10)) == 2


def test_subscribing_later_gets_the_whole_state_once() -> None:
    """A client that subscribes to alerts after some were raised gets one snapshot ("A" mode 0)
    holding them, not the snapshot and the same alerts again."""
    agg = Aggregator(lists_period_ms=1_000)
    hub = Hub(agg, epoch="e1", ring_size=1_000, limits=SessionLimits())
    hub.publish(agg.advance(T0), T0)
    client = hub.connect(channels=frozenset({"top"}), detail=None, resume=None, now_ms=T0)
    assert client.session.build_frame(agg, T0) is not None
    client.session.subscribe(frozenset({"alerts"}))
    hub.publish(agg.add_trade(trade("s1", T0 + 1, count=400_000, price=ONE_DOLLAR // 2), T0 + 1), T0 + 1)
    frame = client.session.build_frame(agg, T0 + 1)
    assert frame is not None
    alert_events = [event for event in orjson.loads(frame.payload)[1:] if event[0] == "A"]
    assert len(alert_events) == 1 and alert_events[0][1] == 0 and len(alert_events[0]) == 3


# -- the store: exactly once across a restart (both backends) ----------------------------------


class _Restarted:
    """What pipeline._rebuild reads of a runtime."""

    def __init__(self, agg: Aggregator, now: int) -> None:
        self.agg = agg
        self.wall_ms = lambda: now


async def test_alerts_survive_a_restart_exactly_once(db_url: str) -> None:  # noqa: F811
    """Alerts are stored with their trades; a restarted server shows them (GET-able) and the
    rebuild raises none again, nor does the feed sending the same trades again; a run that goes
    on across the restart fires once, when it crosses, as without the restart."""
    half = {"price": ONE_DOLLAR // 2, "count": 120_000}  # $600 each: not whales
    first_trades = [trade(f"k{i}", T0 + i * 1_000, **half) for i in range(9)]  # $5,400: crossed at the 9th
    first_trades.append(trade("whale", T0 + 9_000, ticker="KXB-2", count=1_000_000))
    async with running_store(db_url) as store:
        agg = Aggregator()
        ingestor = Ingestor(agg, Metrics(), store=store)
        raised = []
        for new in first_trades:
            raised += alerts_in(ingestor.accept(new, new.ts_ms))
        assert [a.alert_id for a in raised] == ["accumulation:k8", "whale:whale"]
        # The writer commits alerts right after the trades they follow, before counting them written.
        await wait_until(lambda: store.statistics().written_total == len(first_trades))

    now = T0 + 20_000
    async with running_store(db_url) as store:
        restarted = Aggregator()
        await _rebuild(cast(Runtime, _Restarted(restarted, now)), store)
        assert restarted.alerts() == list(reversed(raised))
        ingestor = Ingestor(restarted, Metrics(), store=store)
        again = [alerts_in(ingestor.accept(old, now)) for old in first_trades]
        assert again == [[] for _ in first_trades], "the feed sent stored trades again"
        # The run goes on across the restart ($5,400 held, all in the last 5 min): $5,400 more of it
        # does not fire again; a rebuild that forgot the run would fire on the ninth of these.
        for i in range(9):
            assert alerts_in(ingestor.accept(trade(f"c{i}", now + i, **half), now + i)) == []
        later = T0 + 5 * MINUTE_MS + 8_500  # k0..k8 have left the run; c0..c8 ($5,400) are in it
        assert alerts_in(ingestor.accept(trade("c9", later, **half), later)) == []
        await wait_until(lambda: store.statistics().written_total == 10)
        stored = await store.load_alerts(100)
        # Retention deletes alerts with the trades: those raised by trades before the cutoff.
        await store.purge_before(T0 + 8_500)
        kept = await store.load_alerts(100)
    assert [a.alert_id for a in stored] == ["whale:whale", "accumulation:k8"]
    assert stored == list(reversed(raised))
    assert [a.alert_id for a in kept] == ["whale:whale"]


# -- HTTP --------------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[tuple[Aggregator, Any]]:
    agg = Aggregator()
    runtime = Runtime(config=Config(), agg=agg, hub=cast(Hub, None), metrics=Metrics(), wall_ms=lambda: T0)
    yield agg, create_app(runtime).test_client()


async def test_api_alerts_flows_and_movers(api: tuple[Aggregator, Any]) -> None:
    """The three routes answer in exact decimal strings, newest / largest first."""
    agg, client = api
    agg.add_trade(trade("x1", T0, price=365_050, count=300_000), T0)  # 3,000 contracts: $1,095.15
    agg.add_trade(trade("x2", T0 + 1, price=40 * CENT, count=100_000, side="no"), T0 + 1)
    agg.add_trade(trade("x3", T0 + 2, price=45 * CENT, count=100_000), T0 + 2)
    body = await (await client.get("/api/alerts")).get_json()
    assert body == {
        "alerts": [
            {
                "id": "whale:x1",
                "kind": "whale",
                "ticker": "KXA-1",
                "side": "yes",
                "usd_volume": "1095.150000",
                "contracts": "3000.00",
                "trades": 1,
                "price": "0.36505",
                "ts_ms": T0,
                "first_ts_ms": T0,
                "trade_id": "x1",
            }
        ]
    }
    assert (await (await client.get(f"/api/alerts?since={T0 + 1}")).get_json()) == {"alerts": []}
    flows = (await (await client.get("/api/flows")).get_json())["flows"]
    assert [(f["side"], f["usd_volume"], f["contracts"], f["trades"], f["vwap"]) for f in flows] == [
        ("yes", "1545.150000", "4000.00", 2, "0.386288"),
        ("no", "600.000000", "1000.00", 1, "0.6000"),
    ]
    movers = await (await client.get("/api/movers?window=1h")).get_json()
    assert movers["window"] == "1h" and movers["min_usd_volume"] == "100.000000"
    assert [(m["first_price"], m["last_price"], m["change"], m["change_pct"]) for m in movers["movers"]] == [
        ("0.36505", "0.4500", "0.08495", "23.27")
    ]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/api/alerts?since=-1", "since must be"),
        ("/api/alerts?limit=1001", "limit must be"),
        ("/api/alerts?limit=0", "limit must be"),
        ("/api/flows?parlays=yes", "parlays must be 0 or 1"),
        ("/api/movers?window=5m", "window must be one of 10m, 1h"),
        ("/api/movers?limit=x", "limit must be"),
    ],
)
async def test_api_refuses_bad_parameters_in_our_words(
    api: tuple[Aggregator, Any], target: str, message: str
) -> None:
    """Bad parameters are a 400 whose message says what was expected."""
    _, client = api
    response = await client.get(target)
    assert response.status_code == 400
    assert message in (await response.get_json())["error"]

"""The v1 compatibility endpoint ``/ws/stream``: docs/v1.md's shapes, cadence and serialisation.

The pure encoding and queue are tested without a network; the endpoint through the real
server (hypercorn on loopback, the simulator, the autojump clock, as in test_server.py).
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from wsproto import ConnectionType, WSConnection

from flowboard.aggregate.aggregator import Aggregator
from flowboard.config import make_config
from flowboard.model import MarketMeta, Trade, iso_utc
from flowboard.protocol import v1
from flowboard.server.legacy import feed_of
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.testing.wsclient import WireClient, open_wire_client

BASE_MS = 1_795_800_000_000

TRADE_KEYS = {
    "market_ticker",
    "yes_price",
    "no_price",
    "yes_price_dollars",
    "no_price_dollars",
    "count",
    "taker_side",
    "ts",
}
TICKER_STATE_KEYS = {
    "ticker",
    "last_yes_price",
    "last_no_price",
    "last_trade_time",
    "volume_window",
    "trade_count_window",
    "yes_flow",
    "no_flow",
    "price_points",
    "title",
    "category",
    "liquidity_dollars",
    "open_interest",
    "latest_expiration_time",
    "net_flow",
    "last_yes_price_dollars",
    "last_no_price_dollars",
    "last_price",
    "flow_direction",
}
GLOBAL_STATS_KEYS = {
    "daily_trades_count",
    "total_volume",
    "total_net_flow",
    "session_start_time",
    "active_markets_count",
    "total_window_volume",
}
POINT_KEYS = {"price", "volume", "timestamp", "side"}
ANALYTICS_KEYS = {"mode", "current_period", "summary_stats", "time_series", "generated_at"}
BUCKET_KEYS = {"timestamp", "volume_usd", "trade_count"}
SUMMARY_KEYS = {"total_volume_usd", "total_trades", "peak_volume_usd", "peak_trades"}


def virtual_wall_ms() -> int:
    return BASE_MS + round(trio.current_time() * 1000)


def check_ticker_state(state: dict[str, Any]) -> None:
    assert set(state) == TICKER_STATE_KEYS
    assert 1 <= len(state["price_points"]) <= 20
    for point in state["price_points"]:
        assert set(point) == POINT_KEYS and point["side"] in ("yes", "no")
    assert state["net_flow"] == pytest.approx(state["yes_flow"] - state["no_flow"])
    assert state["last_price"] == state["last_yes_price_dollars"]
    assert state["last_yes_price"] + state["last_no_price"] == pytest.approx(100)
    expected = "bullish" if state["net_flow"] > 0 else "bearish" if state["net_flow"] < 0 else "neutral"
    assert state["flow_direction"] == expected


def check_analytics(data: dict[str, Any], mode: str) -> None:
    assert set(data) == ANALYTICS_KEYS and data["mode"] == mode
    series = data["time_series"]
    step = 60_000 if mode == "hour" else 3_600_000
    assert len(series) == (60 if mode == "hour" else 24)
    assert all(set(bucket) == BUCKET_KEYS for bucket in series)
    assert [b["timestamp"] for b in series] == [series[0]["timestamp"] + i * step for i in range(len(series))]
    assert data["current_period"] == series[-1]
    assert set(data["summary_stats"]) == SUMMARY_KEYS
    assert data["summary_stats"]["total_trades"] == sum(b["trade_count"] for b in series)
    assert data["summary_stats"]["peak_trades"] == max(b["trade_count"] for b in series)


# -- pure encoding ---------------------------------------------------------------------------


def test_units_convert_exactly_at_the_edge() -> None:
    """Cents and contracts are integers when whole, exact-looking floats otherwise."""
    assert v1.cents(360_000) == 36 and isinstance(v1.cents(360_000), int)
    assert v1.cents(365_000) == 36.5
    assert v1.cents(365_050) == 36.505  # a price with 5 decimals: fractional cents
    assert v1.dollars(360_000) == 0.36
    assert v1.dollars(365_051) == 0.365051
    assert v1.contracts(13600) == 136 and v1.contracts(347) == 3.47
    assert v1.usd(3_600_000_000) == 36.0
    assert iso_utc(0) == "1970-01-01T00:00:00Z" and iso_utc(None) is None


def test_trade_message_state_is_as_of_that_trade() -> None:
    """In a publish of several trades, each trade message's ticker_state stops at its own trade."""
    agg = Aggregator()
    agg.set_meta(MarketMeta("KX-A", title="A?", category="Crypto", close_ts_ms=BASE_MS + 3_600_000))
    events = []
    for i, (price, side) in enumerate([(360_000, "yes"), (365_000, "no"), (370_000, "yes")]):
        trade = Trade(f"t{i}", "KX-A", price, 1000 * (i + 1), side, BASE_MS + i)  # type: ignore[arg-type]
        events += [e for e in agg.add_trade(trade, BASE_MS + 10) if type(e).__name__ == "TradeAdded"]
    first = v1.trade_message(agg, events[0], v1.global_stats(agg))  # type: ignore[arg-type]
    state = first["data"]["ticker_state"]
    check_ticker_state(state)
    assert state["last_yes_price"] == 36 and state["volume_window"] == 10
    assert [p["price"] for p in state["price_points"]] == [0.36]
    last = v1.trade_message(agg, events[2], v1.global_stats(agg))  # type: ignore[arg-type]
    state = last["data"]["ticker_state"]
    assert state["volume_window"] == 60 and state["yes_flow"] == 40 and state["no_flow"] == 20
    assert state["latest_expiration_time"] == iso_utc(BASE_MS + 3_600_000)
    assert first["data"]["trade"] == {
        "market_ticker": "KX-A",
        "yes_price": 36,
        "no_price": 64,
        "yes_price_dollars": 0.36,
        "no_price_dollars": 0.64,
        "count": 10,
        "taker_side": "yes",
        "ts": BASE_MS,
    }


def test_global_stats_count_the_utc_day_and_markets_show_their_book_figures() -> None:
    """v1's session is the current UTC day: trades, contracts and net flow all count today's
    trades (not yesterday's, nor only those since a v1 client connected), and open interest and
    liquidity come from the market's metadata."""
    midnight = BASE_MS - BASE_MS % 86_400_000
    agg = Aggregator()
    agg.set_meta(MarketMeta("KX-A", title="A?", open_interest=1_234_567, liquidity=152_012_345_678))
    agg.add_trade(Trade("yesterday", "KX-A", 500_000, 10_000, "yes", midnight - 60_000), midnight - 60_000)
    agg.add_trade(Trade("t1", "KX-A", 500_000, 250, "yes", midnight + 1_000), midnight + 1_000)
    agg.add_trade(Trade("t2", "KX-A", 500_000, 100, "no", midnight + 2_000), midnight + 2_000)
    stats = v1.global_stats(agg)
    assert stats["session_start_time"] == iso_utc(midnight)
    assert (stats["daily_trades_count"], stats["total_volume"], stats["total_net_flow"]) == (2, 3.5, 1.5)
    state = v1.ticker_state(agg, 0)
    assert (state["open_interest"], state["liquidity_dollars"]) == (12_345.67, 1_520.12345678)


def test_queue_conflates_state_keeps_trades_and_gives_up_past_its_bound() -> None:
    """State messages replace their queued predecessor; trades never merge; the bound closes."""
    queue = v1.OutQueue(v1.QueueLimits(max_messages=4))
    queue.push(v1.TRADE, "t1")
    queue.push(v1.ANALYTICS, "h1", key="hour")
    queue.push(v1.TRADE, "t2")
    queue.push(v1.ANALYTICS, "h2", key="hour")
    assert [queue.pop(), queue.pop(), queue.pop(), queue.pop()] == [
        (v1.TRADE, "t1"),
        (v1.ANALYTICS, "h2"),
        (v1.TRADE, "t2"),
        None,
    ]
    queue.push(v1.ANALYTICS, "h3", key="hour")  # the sent one is not replaced
    assert queue.pop() == (v1.ANALYTICS, "h3")
    for i in range(5):
        queue.push(v1.TRADE, f"t{i}")
    assert queue.close_reason is not None and "4" in queue.close_reason
    assert queue.statistics().conflated == 1


def test_client_messages() -> None:
    """ping and get_snapshot are understood; anything else is a ProtocolError."""
    assert v1.parse_client_message('{"type":"ping"}') == "ping"
    assert v1.parse_client_message('{"type": "get_snapshot"}') == "get_snapshot"
    for bad in ("nope", "[]", '{"type":"launch"}'):
        with pytest.raises(v1.ProtocolError):
            v1.parse_client_message(bad)


# -- through the real server -------------------------------------------------------------------


@pytest.fixture
async def server(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> AsyncIterator[Runtime]:
    config = make_config(port=0, rate=20.0, seed=7, sim_history=120.0, db=str(tmp_path / "flowboard.db"))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        yield runtime
        nursery.cancel_scope.cancel()


def v1_url(runtime: Runtime) -> str:
    return runtime.url.replace("http://", "ws://") + "/ws/stream"


async def receive_json(client: WireClient) -> tuple[dict[str, Any], str]:
    text = (await client.receive()).text
    return json.loads(text), text


async def test_snapshot_on_connect_has_the_documented_shape(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """The first message is a snapshot: recent trades newest first, hot markets, stats, both views."""
    client = await open_wire_client(v1_url(server), deflate=False)
    message, text = await receive_json(client)
    assert message["type"] == "snapshot"
    assert '", "' in text and '": "' in text, "stdlib json.dumps default separators"
    data = message["data"]
    assert set(data) == {"recent_trades", "hot_markets", "global_stats", "analytics_data"}
    recent = data["recent_trades"]
    assert 1 <= len(recent) <= 200 and all(set(t) == TRADE_KEYS for t in recent)
    assert [t["ts"] for t in recent] == sorted((t["ts"] for t in recent), reverse=True)
    expected = server.agg.recent_trades(200)
    assert [(t["market_ticker"], t["ts"]) for t in recent] == [(t.ticker, t.ts_ms) for t in expected]
    hot = data["hot_markets"]
    assert len(hot) == 12
    for state in hot:
        check_ticker_state(state)
    volumes = [state["volume_window"] for state in hot]
    assert volumes == sorted(volumes, reverse=True)
    assert set(data["global_stats"]) == GLOBAL_STATS_KEYS
    stats = data["global_stats"]
    # The session is the UTC day, not "since this client connected": the day's trades so far count.
    day_contracts, day_net_flow = server.agg.today_flow()
    assert stats["daily_trades_count"] == server.agg.today()[0] > 0
    assert (stats["total_volume"], stats["total_net_flow"]) == (
        v1.contracts(day_contracts),
        v1.contracts(day_net_flow),
    )
    assert day_contracts > 0
    assert stats["session_start_time"] == iso_utc(server.agg.now_ms - server.agg.now_ms % 86_400_000)
    # The simulator's markets carry open interest and liquidity, as Kalshi's do.
    assert all(state["open_interest"] > 0 and state["liquidity_dollars"] > 0 for state in hot)
    check_analytics(data["analytics_data"]["hour_mode"], "hour")
    check_analytics(data["analytics_data"]["day_mode"], "day")
    await client.aclose()


async def test_cadence_trades_analytics_hot_and_ping(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """Over 61 s: every trade once, analytics hour+day each second, hot every 5 s, a ping at 30 s."""
    client = await open_wire_client(v1_url(server), deflate=True)
    await receive_json(client)
    start_total = server.agg.trades_total
    kinds: Counter[str] = Counter()
    order: list[str] = []
    seen_ts: list[int] = []
    with trio.move_on_after(61):
        while True:
            message, _ = await receive_json(client)
            kind = message["type"]
            kinds[kind] += 1
            if kind == "trade":
                data = message["data"]
                assert set(data) == {"trade", "ticker_state", "global_stats"}
                assert set(data["trade"]) == TRADE_KEYS
                check_ticker_state(data["ticker_state"])
                assert data["ticker_state"]["ticker"] == data["trade"]["market_ticker"]
                assert set(data["global_stats"]) == GLOBAL_STATS_KEYS
                seen_ts.append(data["trade"]["ts"])
            elif kind == "analytics_update":
                check_analytics(message["data"], message["data"]["mode"])
                order.append(message["data"]["mode"])
            elif kind == "hot_markets_update":
                assert len(message["data"]["hot_markets"]) == 12
            elif kind == "ping":
                assert isinstance(message["timestamp"], float)
    assert kinds["trade"] == server.agg.trades_total - start_total > 600
    assert kinds["analytics_update"] in (120, 122)
    assert order[:4] == ["hour", "day", "hour", "day"]
    assert kinds["hot_markets_update"] in (12, 13)
    assert kinds["ping"] == 2
    metrics = server.metrics
    assert metrics.frames_sent.labels("v1", "trade")._value.get() == kinds["trade"]
    assert metrics.bytes_sent.labels("v1", "snapshot")._value.get() > 10_000
    await client.aclose()


async def test_get_snapshot_and_ping_are_answered(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """A client's get_snapshot gets a fresh snapshot, its ping a pong; garbage is ignored."""
    client = await open_wire_client(v1_url(server))
    await receive_json(client)
    await client.send_text("not json")
    await client.send_text('{"type":"ping"}')
    await client.send_text('{"type":"get_snapshot"}')
    wanted = {"pong", "snapshot"}
    with trio.fail_after(5):
        while wanted:
            message, _ = await receive_json(client)
            wanted.discard(message["type"])
            if message["type"] == "pong":
                assert isinstance(message["timestamp"], float)
    assert server.metrics.bad_commands._value.get() == 1
    await client.aclose()


async def test_v1_and_v2_clients_share_the_hub_and_v1_leaves_cleanly(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """The v1 feed joins the hub's feeds with the first v1 client and leaves with the last;
    it is never counted as a v2 client."""
    before = len(server.hub.clients)
    first = await open_wire_client(v1_url(server))
    second = await open_wire_client(v1_url(server))
    await receive_json(first)
    await receive_json(second)
    assert len(server.hub.feeds) == 1
    assert len(server.hub.clients) == before
    await first.aclose()
    await second.aclose()
    await trio.sleep(1)
    assert not server.hub.feeds


async def test_connections_are_counted_per_protocol(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """/api/stats and flowboard_clients count each v1 connection, although one feed serves them."""
    v1_clients = [await open_wire_client(v1_url(server)) for _ in range(5)]
    v2_url = server.url.replace("http://", "ws://") + "/ws"
    v2_clients = [await open_wire_client(v2_url) for _ in range(2)]
    for client in [*v1_clients, *v2_clients]:
        await client.receive()
    async with httpx.AsyncClient(base_url=server.url) as http:
        stats = (await http.get("/api/stats")).json()
        metrics = (await http.get("/metrics")).text
    assert stats["clients"] == 7
    assert stats["clients_by_protocol"] == {"v1": 5, "v2": 2}
    assert 'flowboard_clients{protocol="v1"} 5.0' in metrics
    assert 'flowboard_clients{protocol="v2"} 2.0' in metrics
    for client in [*v1_clients, *v2_clients]:
        await client.aclose()
    await trio.sleep(1)
    assert server.open_connections == {"v1": 0, "v2": 0}


async def open_stalled_client(url: str) -> WireClient:
    """A v1 client that never reads, with a tiny receive buffer so its socket fills at once."""
    authority = url[len("ws://") :].split("/", 1)[0]
    host, port = authority.rsplit(":", 1)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    client = WireClient(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT))
    await client._handshake(authority, "/ws/stream", deflate=False)
    return client


async def test_stalled_v1_client_is_closed_and_does_not_slow_another(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A v1 client that stops reading is dropped (by us with 4008 past the queue bound or the
    stall timeout, or by hypercorn first); a reading client meanwhile gets every trade."""
    config = make_config(
        port=0, rate=300.0, seed=3, sim_history=0.0, stall_timeout=2.0, db=str(tmp_path / "f.db")
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        stalled = await open_stalled_client(v1_url(runtime))
        reader = await open_wire_client(v1_url(runtime))
        await receive_json(reader)
        start_total = runtime.agg.trades_total
        trades = 0
        # How long the kernel's socket buffers absorb the stream depends on its autotuning.
        feed = feed_of(runtime)
        with trio.move_on_after(120):
            while len(feed.connections) > 1:
                message, _ = await receive_json(reader)
                trades += message["type"] == "trade"
            with trio.move_on_after(5):
                while True:
                    message, _ = await receive_json(reader)
                    trades += message["type"] == "trade"
        assert trades >= (runtime.agg.trades_total - start_total) - 50
        assert len(feed.connections) == 1, "the stalled connection is gone"
        assert runtime.metrics.closed_slow._value.get() <= 1
        await stalled.aclose()
        await reader.aclose()
        nursery.cancel_scope.cancel()

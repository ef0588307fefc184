"""The real server end to end: hypercorn on a loopback port, the simulator, real WebSocket clients.

Time is trio's autojump clock; the simulator and the aggregator read a wall clock derived
from it, so minutes of feed pass in milliseconds and every run is the same.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import cast

import httpx
import orjson
import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection

from flowboard.aggregate.aggregator import Aggregator
from flowboard.config import Config, make_config
from flowboard.errors import StoreError
from flowboard.ingest.feed import FeedCounters, FeedParser
from flowboard.model import MarketMeta
from flowboard.protocol import v2
from flowboard.protocol.decoder import ViewState, expected_summary
from flowboard.server.hub import Hub
from flowboard.server.metrics import Metrics
from flowboard.server.pipeline import _save_meta_periodically, run_server
from flowboard.server.runtime import Runtime
from flowboard.store import Store
from flowboard.testing.wsclient import ConnectionClosed, WireClient, open_wire_client

BASE_MS = 1_795_800_000_000


def virtual_wall_ms() -> int:
    return BASE_MS + round(trio.current_time() * 1000)


@pytest.fixture
async def server(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> AsyncIterator[Runtime]:
    config = make_config(port=0, rate=20.0, seed=7, sim_history=120.0, db=str(tmp_path / "flowboard.db"))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        yield runtime
        nursery.cancel_scope.cancel()


def ws_url(runtime: Runtime, query: str = "") -> str:
    return runtime.url.replace("http://", "ws://") + "/ws" + query


async def read_until_current(runtime: Runtime, client: WireClient, view: ViewState) -> None:
    """Fold frames until the view is at the hub's latest seq with nothing pending for it."""
    session = next(iter(runtime.hub.clients)).session
    while view.seq != runtime.hub.seq or session.has_pending(runtime.wall_ms()):
        view.apply_frame((await client.receive()).text)


def assert_view_matches(
    runtime: Runtime, view: ViewState, channels: frozenset[str] = v2.DEFAULT_CHANNELS
) -> None:
    actual = view.summary()
    actual.pop("seq")
    expected = expected_summary(
        runtime.agg, channels=channels, detail=None, tape_len=len(view.tape), detail_len=50
    )
    assert actual == expected


async def test_default_view_over_deflate_matches_the_server(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that offers permessage-deflate and sends nothing gets the whole dashboard, exactly."""
    client = await open_wire_client(ws_url(server), deflate=True)
    assert client.deflate_negotiated
    view = ViewState()
    first = await client.receive()
    view.apply_frame(first.text)
    assert view.summary()["hot"], "the warm start gives hot markets from the first frame"
    with trio.move_on_after(30):
        while True:
            view.apply_frame((await client.receive()).text)
    await read_until_current(server, client, view)
    assert_view_matches(server, view)
    await client.aclose()


async def test_frames_compress_and_stay_small(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """With deflate, a caught-up client's trade frames cost tens of bytes on the wire."""
    client = await open_wire_client(ws_url(server), deflate=True)
    snapshot = await client.receive()
    assert snapshot.wire_bytes < len(snapshot.text) / 2
    sizes = []
    with trio.move_on_after(20):
        while True:
            sizes.append((await client.receive()).wire_bytes)
    assert sizes and sorted(sizes)[len(sizes) // 2] < 40
    await client.aclose()


async def test_plain_client_gets_uncompressed_frames(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that does not offer deflate is served plain text frames."""
    client = await open_wire_client(ws_url(server), deflate=False)
    assert not client.deflate_negotiated
    message = await client.receive()
    assert message.wire_bytes >= len(message.text.encode())
    await client.aclose()


async def test_malformed_command_gets_an_error_and_the_stream_goes_on(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """Bad client frames get an `e` event; the same connection keeps streaming."""
    client = await open_wire_client(ws_url(server))
    await client.receive()
    await client.send_text("not json")
    await client.send_text('{"op": "launch"}')
    errors: list[str] = []
    trades = 0
    with trio.move_on_after(10):
        while len(errors) < 2 or trades == 0:
            frame = orjson.loads((await client.receive()).text)
            errors += [event[1] for event in frame[1:] if event[0] == "e"]
            trades += sum(1 for event in frame[1:] if event[0] == "t")
    assert "invalid JSON" in errors[0]
    assert "unknown op" in errors[1]
    assert trades > 0
    await client.aclose()


async def test_oversized_command_closes_with_1009_and_others_keep_streaming(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """A client frame over 64 KiB closes that connection with 1009; another client is unaffected."""
    other = await open_wire_client(ws_url(server))
    await other.receive()
    client = await open_wire_client(ws_url(server))
    await client.receive()
    await client.send_text("x" * (65 * 1024))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.receive()
    await client.aclose()
    assert closed.value.code == 1009
    message = await other.receive()
    assert message.text.startswith("[")
    await other.aclose()


async def test_bad_query_closes_with_a_reason(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """Unknown channels in the URL close the connection with 1008 and say which are valid."""
    client = await open_wire_client(ws_url(server, "?ch=trades,bogus"))
    with pytest.raises(ConnectionClosed) as closed:
        await client.receive()
    await client.aclose()
    assert closed.value.code == 1008
    assert closed.value.reason is not None and "bogus" in closed.value.reason


async def test_reconnecting_client_resumes_without_a_snapshot(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that reconnects with EPOCH:SEQ gets what it missed and ends equal to the server."""
    client = await open_wire_client(ws_url(server))
    view = ViewState()
    with trio.move_on_after(5):
        while True:
            view.apply_frame((await client.receive()).text)
    await client.aclose()
    await trio.sleep(5)  # trades go on while it is away
    client = await open_wire_client(ws_url(server, f"?resume={view.epoch}:{view.seq}"))
    first = await client.receive()
    hello = orjson.loads(first.text)[1]
    assert hello[0] == "H" and hello[1]["resumed"] is True
    view.apply_frame(first.text)
    await read_until_current(server, client, view)
    assert_view_matches(server, view)
    assert server.metrics.resumed._value.get() == 1
    await client.aclose()


async def test_stalled_client_does_not_delay_a_fast_one(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A client whose socket stops taking data is resynced, then dropped once its socket has
    taken nothing for --stall-timeout (10 s); the fast one keeps its pace all along."""
    config = make_config(
        port=0,
        rate=300.0,
        seed=3,
        sim_history=0.0,
        max_pending_trades=200,
        max_resyncs=2,
        db=str(tmp_path / "flowboard.db"),
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        stalled = await open_small_buffer_client(ws_url(runtime))
        await trio.sleep(0.1)
        stalled_client = next(iter(runtime.hub.clients))
        fast = await open_wire_client(ws_url(runtime))
        lags = []
        received = 0
        with trio.move_on_after(20):
            while True:
                message = await fast.receive()
                frame = orjson.loads(message.text)
                for event in frame[1:]:
                    if event[0] == "t":
                        received += len(event) - 1
                lags.append(runtime.hub.seq - frame[0])
        assert received > 300 * 20 * 0.8
        stats = runtime.hub.statistics()
        assert stats.pending_trades_max <= config.delivery.session.max_pending_trades + 1
        assert stalled_client.session.statistics().resyncs >= 1
        assert stalled_client not in runtime.hub.clients
        assert runtime.metrics.closed_slow._value.get() == 1
        await stalled.aclose()
        await fast.aclose()
        nursery.cancel_scope.cancel()


async def open_small_buffer_client(url: str) -> WireClient:
    """A client that never reads, with a tiny receive buffer so its socket fills at once."""
    authority = url[len("ws://") :].split("/", 1)[0]
    host, port = authority.rsplit(":", 1)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    client = WireClient(stream, WSConnection(ConnectionType.CLIENT))
    await client._handshake(authority, "/ws", deflate=False)
    return client


async def test_http_api_reports_the_aggregated_state(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """The JSON API, health and metrics read the same state the streams come from."""
    await trio.sleep(3)
    async with httpx.AsyncClient(base_url=server.url) as http:
        stats = (await http.get("/api/stats")).json()
        hot = (await http.get("/api/markets/hot")).json()["markets"]
        hour = (await http.get("/api/analytics", params={"mode": "hour"})).json()
        ticker = hot[0]["ticker"]
        market = (await http.get(f"/api/markets/{ticker}")).json()
        recent = (await http.get("/api/trades/recent", params={"limit": 5})).json()["trades"]
        missing = await http.get("/api/markets/NOPE-1")
        bad_limit = await http.get("/api/trades/recent", params={"limit": "lots"})
        ready = await http.get("/readyz")
        metrics = (await http.get("/metrics")).text
    assert stats["trades_total"] == server.agg.trades_total
    assert [m["rank"] for m in hot] == list(range(1, len(hot) + 1))
    assert len(hour["buckets"]) == 60 and hour["current"] == hour["buckets"][-1]
    assert market["ticker"] == ticker and market["trades"]
    assert len(recent) == 5
    assert missing.status_code == 404 and "NOPE-1" in missing.json()["error"]
    assert bad_limit.status_code == 400
    assert ready.status_code == 200
    assert "flowboard_trades_ingested_total" in metrics and "flowboard_clients" in metrics
    # The loop's lag is sampled (the autojump clock never runs late) and frames go out at once.
    assert 'flowboard_loop_lag_seconds_bucket{le="0.001"}' in metrics
    assert "flowboard_loop_lag_seconds_count 0.0" not in metrics
    assert "flowboard_coalesce_interval_seconds 0.0" in metrics


def test_malformed_feed_messages_are_counted_and_skipped() -> None:
    """Garbage, wrong types and broken trades never raise; each is counted (in the server's
    metrics, through the counters the pipeline gives the parser)."""
    from flowboard.server.metrics import Metrics

    metrics = Metrics()
    parser = FeedParser(
        FeedCounters(
            message=lambda kind: metrics.feed_messages.labels(kind).inc(), malformed=metrics.malformed.inc
        )
    )
    for text in [
        "garbage",
        "[]",
        '{"type":"trade","msg":{"market_ticker":"X"}}',
        '{"type":"ticker","msg":{}}',
    ]:
        assert parser.parse(text) is None
    assert metrics.malformed._value.get() == 3
    assert metrics.feed_messages.labels("ticker")._value.get() == 1


class _MetaStoreDownOnce:
    """A store whose first metadata write fails as an outage does; the rest are kept."""

    def __init__(self) -> None:
        self.failures_left = 1
        self.saved: list[MarketMeta] = []

    async def save_meta(self, metas: Sequence[MarketMeta]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise StoreError("PostgreSQL db: saving market metadata failed: server closed the connection")
        self.saved.extend(metas)


async def test_metadata_waits_out_a_store_outage(autojump_clock: trio.testing.MockClock) -> None:
    """A database that fails while market metadata is saved must not stop the server: the
    metadata is kept and saved at the next attempt, so the newest description of each market
    ends up stored."""
    store = _MetaStoreDownOnce()
    runtime = Runtime(
        config=Config(),
        agg=Aggregator(),
        hub=cast(Hub, None),
        metrics=Metrics(),
        wall_ms=lambda: 0,
        store=cast(Store, store),
    )
    runtime.metas_to_save.append(MarketMeta("KXA-1", title="old title"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_save_meta_periodically, runtime)
        await trio.sleep(7)  # the first attempt failed
        runtime.metas_to_save += [MarketMeta("KXA-1", title="new title"), MarketMeta("KXB-2", title="B")]
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    stored = {meta.ticker: meta for meta in store.saved}  # each save overwrites the market's row
    assert stored == {
        "KXA-1": MarketMeta("KXA-1", title="new title"),
        "KXB-2": MarketMeta("KXB-2", title="B"),
    }
    assert runtime.metas_to_save == []

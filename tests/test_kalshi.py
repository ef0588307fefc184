"""The Kalshi WebSocket ingest against the fake Kalshi on loopback (autojump clock)."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from fake_kalshi import FakeKalshi, eventually, session_private_key, write_test_key

from flowboard.errors import ConfigError, RestUnavailable
from flowboard.ingest.backfill import RecentIds
from flowboard.ingest.feed import FeedItem, Received
from flowboard.ingest.kalshi import KalshiConfig, KalshiIngest, serve_kalshi
from flowboard.ingest.kalshi_format import decode_message, trade_from_msg
from flowboard.ingest.kalshi_rest import open_rest_client
from flowboard.model import Trade

BASE_MS = 1_760_000_000_000


def wall_ms() -> int:
    """Wall time that follows trio's (virtual) clock, shared by the fake and the ingest."""
    return BASE_MS + int(trio.current_time() * 1000)


@attrs.define
class Harness:
    fake: FakeKalshi
    ingest: KalshiIngest
    received: list[Trade]
    raw: list[Received]

    def ids(self) -> list[str]:
        return [t.trade_id for t in self.received]

    async def trade(self, **kwargs: Any) -> Trade:
        trade = self.fake.random_trade(wall_ms())
        await self.fake.publish(trade, **kwargs)
        return trade

    async def settle(self, seconds: float = 1.0) -> None:
        await trio.sleep(seconds)


@asynccontextmanager
async def running(
    tmp_path: Path | None = None,
    *,
    fake_options: dict[str, Any] | None = None,
    signed: bool = True,
    **config_options: Any,
) -> AsyncIterator[Harness]:
    """The fake Kalshi, the ingest connected to it, and a consumer of what it forwards."""
    key = session_private_key()
    fake = FakeKalshi(wall_ms=wall_ms, public_keys={"test-key": key.public_key()}, **(fake_options or {}))
    received: list[Trade] = []
    raw: list[Received] = []
    extra = {k: config_options.pop(k) for k in ("last_stored_ts_ms", "is_known") if k in config_options}
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        options: dict[str, Any] = {
            "ws_url": fake.ws_url,
            "rest_url": fake.rest_url,
            "stall_timeout_s": 25.0,
            "reconcile_interval_s": 0.0,
            "backoff_initial_s": 0.5,
            "backoff_max_s": 10.0,
            "rest_rate_per_s": 20.0,
        }
        if signed:
            assert tmp_path is not None
            options |= {"key_id": "test-key", "private_key_path": str(write_test_key(tmp_path))}
        options |= config_options
        send, receive = trio.open_memory_channel[FeedItem](1000)

        async def consume() -> None:
            async for item in receive:
                assert isinstance(item, Received), item
                raw.append(item)
                if item.raw is not None:
                    # The text kept for `record` is the message the trade was parsed from.
                    assert trade_from_msg(decode_message(item.raw).msg) == item.trade
                received.append(item.trade)

        nursery.start_soon(consume)
        ingest = await nursery.start(
            lambda task_status: serve_kalshi(
                KalshiConfig(**options),
                send,
                wall_ms=wall_ms,
                rng=random.Random(7),
                task_status=task_status,
                **extra,
            )
        )
        await eventually(lambda: bool(fake.connections and fake.connections[0].subscriptions), poll_s=0.01)
        yield Harness(fake, ingest, received, raw)
        nursery.cancel_scope.cancel()


async def test_signed_connection_is_verified_by_the_fake(tmp_path: Path, autojump_clock: Any) -> None:
    """With a key configured, the handshake carries a signature the fake verifies; trades flow."""
    async with running(tmp_path, fake_options={"require_auth": True}) as h:
        sent = [await h.trade() for _ in range(5)]
        await h.settle()
        assert h.received == sent
        assert h.fake.counts["signed_ok"] >= 1
        assert h.fake.commands[0] == {"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}}
        assert h.ingest.statistics().connects == 1


async def test_wrong_key_is_refused_and_reported(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A key the server does not know is refused (401): logged plainly, counted, retried with backoff."""
    fake = FakeKalshi(wall_ms=wall_ms, public_keys={}, require_auth=True)
    send, _receive = trio.open_memory_channel[FeedItem](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        config = KalshiConfig(
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
            key_id="test-key",
            private_key_path=str(write_test_key(tmp_path)),
            backoff_initial_s=1.0,
            backoff_max_s=8.0,
            reconcile_interval_s=0,
        )
        ingest = await nursery.start(
            lambda task_status: serve_kalshi(
                config, send, wall_ms=wall_ms, rng=random.Random(1), task_status=task_status
            )
        )
        await trio.sleep(60)
        stats = ingest.statistics()
        nursery.cancel_scope.cancel()
    # Backoff 1, 2, 4, 8, 8 ... s: about ten attempts in a minute, not a tight loop.
    assert 5 <= fake.counts["ws_rejected"] <= 15
    assert stats.auth_failures == fake.counts["ws_rejected"]
    assert stats.connects == 0
    assert "Kalshi refused the connection (HTTP 401" in caplog.text
    assert "BEGIN" not in caplog.text


async def test_unsigned_connection(autojump_clock: Any) -> None:
    """Without a key the ingest connects unsigned, and the fake (not requiring auth) serves it."""
    async with running(signed=False) as h:
        sent = [await h.trade() for _ in range(3)]
        await h.settle()
        assert h.received == sent
        assert h.fake.counts["signed_ok"] == 0


async def test_unsigned_connection_refused_says_what_to_configure(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """When the server requires auth and no key is configured, the log says which flags to set."""
    fake = FakeKalshi(wall_ms=wall_ms, require_auth=True)
    send, _receive = trio.open_memory_channel[FeedItem](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        config = KalshiConfig(ws_url=fake.ws_url, rest_url=fake.rest_url, reconcile_interval_s=0)
        await nursery.start(
            lambda task_status: serve_kalshi(config, send, wall_ms=wall_ms, task_status=task_status)
        )
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert "Kalshi needs --kalshi-key-id and --kalshi-private-key" in caplog.text


async def test_start_up_errors_are_config_errors(tmp_path: Path) -> None:
    """Missing key file, garbage PEM and bad URLs stop serve_kalshi before it reports started."""
    send, _receive = trio.open_memory_channel[FeedItem](1)
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key at all")
    async with trio.open_nursery() as nursery:
        for path, message in ((missing, "not found"), (garbage, "is not a PEM private key")):
            config = KalshiConfig(key_id="k", private_key_path=str(path), ws_url="ws://127.0.0.1:9/x")
            with pytest.raises(ConfigError, match=message):
                await nursery.start(
                    lambda task_status, c=config: serve_kalshi(
                        c, send, wall_ms=wall_ms, task_status=task_status
                    )
                )
    with pytest.raises(
        ConfigError, match=r"^--kalshi-ws-url: expected a ws/wss:// URL with a host, got 'http://x'"
    ):
        KalshiConfig(ws_url="http://x")
    with pytest.raises(ConfigError, match="--kalshi-rest-url"):
        KalshiConfig(rest_url="ftp://host/trade-api/v2")
    with pytest.raises(ConfigError, match="valid port"):
        KalshiConfig(ws_url="ws://host:99999/x")
    with pytest.raises(ConfigError, match="--kalshi-env"):
        KalshiConfig(env="staging")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--kalshi-key-id needs --kalshi-private-key"):
        KalshiConfig(key_id="k")


def test_environment_urls() -> None:
    """prod and demo resolve to Kalshi's documented hosts; overrides win."""
    assert KalshiConfig().resolved_ws_url == "wss://external-api-ws.kalshi.com/trade-api/ws/v2"
    assert KalshiConfig(env="demo").resolved_rest_url == "https://external-api.demo.kalshi.co/trade-api/v2"
    assert KalshiConfig(ws_url="ws://127.0.0.1:1/trade-api/ws/v2").resolved_ws_url.startswith(
        "ws://127.0.0.1"
    )


async def test_reconnects_with_backoff_after_drops(tmp_path: Path, autojump_clock: Any) -> None:
    """Dropped connections are re-opened, and trades sent while down are backfilled over REST."""
    async with running(tmp_path) as h:
        sent = [await h.trade()]
        for _ in range(3):
            await h.fake.drop_connections()
            sent.append(await h.trade())  # lost on the WebSocket: nobody is connected
            await trio.sleep(30)
            sent.append(await h.trade())
        await h.settle()
        stats = h.ingest.statistics()
        assert sorted(h.ids()) == sorted(t.trade_id for t in sent)
        assert stats.reconnects == 3
        assert stats.backfilled == 3


async def test_pings_without_trades_do_not_reconnect(tmp_path: Path, autojump_clock: Any) -> None:
    """Ten quiet minutes with pings every 10 s: no stall, no reconnect."""
    async with running(tmp_path) as h:
        await trio.sleep(600)
        sent = await h.trade()
        await h.settle()
        stats = h.ingest.statistics()
        assert stats.reconnects == 0 and stats.stalls == 0
        assert h.received == [sent]


async def test_true_stall_reconnects(tmp_path: Path, autojump_clock: Any) -> None:
    """No frame and no ping for the stall timeout: the ingest gives up on the connection and reconnects."""
    async with running(tmp_path) as h:
        h.fake.stall()
        lost = await h.trade()
        start = trio.current_time()
        await eventually(lambda: h.ingest.statistics().reconnects >= 1, timeout_s=120, poll_s=0.5)
        # Detected after ~25 s without pings (the last ping came up to 10 s before the stall).
        assert 14 <= trio.current_time() - start <= 40
        await h.settle(2)
        assert h.ingest.statistics().stalls == 1
        assert h.received == [lost]  # recovered by the reconnect backfill


async def test_sequence_gap_is_backfilled(tmp_path: Path, autojump_clock: Any) -> None:
    """A missing seq triggers a REST backfill that recovers exactly the missing trade."""
    async with running(tmp_path) as h:
        first = await h.trade()
        missing = await h.trade(delivery="gap")
        third = await h.trade()
        await h.settle()
        stats = h.ingest.statistics()
        assert stats.gaps == 1 and stats.backfilled == 1
        assert h.received == [first, third, missing]
        assert h.raw[-1].raw is None  # from REST: no feed text


async def test_a_feed_full_of_gaps_cannot_flood_the_log(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Sequence gaps are the feed's doing: each is counted, but their log lines are rate-limited
    (10, then the rest held back), like every other line bad input causes."""
    caplog.set_level(logging.INFO, logger="flowboard.ingest.kalshi")
    async with running(tmp_path) as h:
        for _ in range(25):
            await h.trade(delivery="gap")  # never sent: the next trade's seq shows the gap
            await h.trade()
        await h.settle()
        assert h.ingest.statistics().gaps == 25
    assert caplog.text.count("sequence gap") == 10


async def test_duplicates_are_removed(tmp_path: Path, autojump_clock: Any) -> None:
    """The same trade twice on the stream, and again in a backfill, reaches the pipeline once."""
    async with running(tmp_path) as h:
        dup = await h.trade(delivery="duplicate")
        await h.trade(delivery="gap")  # forces a backfill over a range that includes dup
        await h.trade()
        await h.settle()
        assert h.ids().count(dup.trade_id) == 1
        assert sorted(h.ids()) == sorted(t.trade_id for t in h.fake.trades)
        assert h.ingest.statistics().deduplicated >= 2


async def test_legacy_messages_are_forwarded_and_parse(tmp_path: Path, autojump_clock: Any) -> None:
    """Legacy integer-cent messages are forwarded as received and parse to the same trade."""
    async with running(tmp_path) as h:
        trade = h.fake.random_trade(wall_ms(), legacy_exact=True)
        await h.fake.publish(trade, delivery="legacy")
        await h.settle()
        assert h.received == [trade]
        assert h.raw[0].raw is not None and '"yes_price":' in h.raw[0].raw


async def test_unknown_types_and_garbage_are_counted_not_forwarded(
    tmp_path: Path, autojump_clock: Any
) -> None:
    """Unknown message types and garbage frames are counted and skipped; the connection stays up."""
    async with running(tmp_path) as h:
        await h.fake.send_unknown_type()
        await h.fake.send_garbage()
        await h.fake.send_garbage('{"type":"trade","sid":1,"msg":{"trade_id":"x"}}')
        sent = await h.trade()
        await h.settle()
        stats = h.ingest.statistics()
        assert (stats.unknown_types, stats.malformed, stats.reconnects) == (1, 2, 0)
        assert h.received == [sent]


async def test_code_25_resubscribes_and_backfills(tmp_path: Path, autojump_clock: Any) -> None:
    """Error 25 ends the subscription: the ingest subscribes again and backfills what it missed."""
    async with running(tmp_path) as h:
        await h.fake.subscription_error(25)
        lost = await h.trade()  # no subscription at the server right now
        await h.settle()
        after = await h.trade()
        await h.settle()
        stats = h.ingest.statistics()
        assert stats.resubscribes == 1 and stats.reconnects == 0
        assert [c["cmd"] for c in h.fake.commands] == ["subscribe", "subscribe"]
        assert sorted(h.ids()) == sorted([lost.trade_id, after.trade_id])


async def test_code_9_is_reported_and_retried(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An in-band 'authentication required' error is logged with what to configure and retried."""
    async with running(tmp_path) as h:
        await h.fake.subscription_error(9)
        await eventually(lambda: h.ingest.statistics().reconnects >= 1, poll_s=0.5)
        assert h.ingest.statistics().auth_failures == 1
    assert "authentication required (code 9" in caplog.text


async def test_rest_429_backs_off_and_recovers(tmp_path: Path, autojump_clock: Any) -> None:
    """Backfill answered by 429s waits (counted) and then gets the trades."""
    async with running(tmp_path) as h:
        h.fake.rate_limit_next_requests(4)
        await h.trade()
        missing = await h.trade(delivery="gap")
        await h.trade()
        start = trio.current_time()
        await eventually(lambda: missing.trade_id in h.ids(), timeout_s=120)
        stats = h.ingest.statistics()
        assert stats.rest_429s == 4
        assert trio.current_time() - start >= 0.25 + 0.5 + 1 + 2  # at least half of each backoff step


async def test_market_filter(tmp_path: Path, autojump_clock: Any) -> None:
    """--markets subscribes with market_tickers; only those markets' trades arrive (backfill too)."""
    wanted = ("FED-23DEC-T3.00",)
    async with running(tmp_path, markets=wanted) as h:
        for _ in range(40):
            await h.trade()
        await h.fake.publish(h.fake.random_trade(wall_ms()), delivery="gap")
        await h.settle()
        assert h.fake.commands[0]["params"] == {"channels": ["trade"], "market_tickers": list(wanted)}
        assert {t.ticker for t in h.received} <= set(wanted)
        assert sorted(h.ids()) == sorted(t.trade_id for t in h.fake.trades if t.ticker in wanted)


async def test_silent_loss_is_found_by_reconciliation(tmp_path: Path, autojump_clock: Any) -> None:
    """A trade skipped without a seq gap is recovered by the periodic reconciliation, once."""
    async with running(tmp_path, reconcile_interval_s=30.0) as h:
        lost = await h.trade(delivery="silent")
        await h.trade()
        await trio.sleep(200)
        assert h.ids().count(lost.trade_id) == 1
        assert len(h.received) == 2
        assert h.ingest.statistics().rest_requests >= 5


async def test_feed_without_seq(tmp_path: Path, autojump_clock: Any) -> None:
    """Envelopes without seq are accepted; losses are then found by reconciliation."""
    async with running(tmp_path, fake_options={"send_seq": False}, reconcile_interval_s=20.0) as h:
        await h.trade()
        await h.trade(delivery="gap")
        await h.trade()
        await trio.sleep(60)
        assert sorted(h.ids()) == sorted(t.trade_id for t in h.fake.trades)
        assert h.ingest.statistics().gaps == 0


async def test_start_up_backfill_from_the_store(tmp_path: Path, autojump_clock: Any) -> None:
    """Given the last stored trade time, trades since then come over REST, minus those the store knows."""
    fake_trades: list[Trade] = []

    async with running(tmp_path, reconcile_interval_s=0.0) as h:
        fake_trades = h.fake.trades
        assert h.received == []
    # A fresh fake with history, then an ingest that starts with a store.
    key = session_private_key()
    fake = FakeKalshi(wall_ms=wall_ms, public_keys={"test-key": key.public_key()})
    await trio.sleep(100)
    history = [fake.random_trade(wall_ms() - 50_000 + i * 1000) for i in range(30)]
    fake.trades.extend(history)
    stored = {t.trade_id for t in history[:10]}
    received: list[str] = []
    send, receive = trio.open_memory_channel[FeedItem](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        config = KalshiConfig(
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
            key_id="test-key",
            private_key_path=str(write_test_key(tmp_path)),
            reconcile_interval_s=0,
        )
        last_stored: Callable[[], int | None] = lambda: history[9].ts_ms  # noqa: E731
        await nursery.start(
            lambda task_status: serve_kalshi(
                config,
                send,
                wall_ms=wall_ms,
                last_stored_ts_ms=last_stored,
                is_known=stored.__contains__,
                task_status=task_status,
            )
        )
        await trio.sleep(5)
        while True:
            try:
                item = receive.receive_nowait()
                assert isinstance(item, Received)
                received.append(item.trade.trade_id)
            except trio.WouldBlock:
                break
        nursery.cancel_scope.cancel()
    assert fake_trades == []
    assert received == [t.trade_id for t in history[10:]]


async def test_logs_never_contain_the_key(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Over connects, refusals and reconnects, no log line carries key material."""
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path) as h:
        h.fake.refuse_next_connections(1)
        await h.fake.drop_connections()
        await trio.sleep(20)
    pem = write_test_key(tmp_path).read_text()
    body = pem.splitlines()[1]
    assert body not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


def test_recent_ids_expire_by_trade_time_and_stay_bounded() -> None:
    """Ids are forgotten ttl after the newest trade time (not the wall clock), oldest first past max_ids."""
    recent = RecentIds(ttl_ms=1000, max_ids=3)
    assert recent.add("a", 0) and not recent.add("a", 0)
    recent.add("b", 500)
    assert "a" in recent  # no newer trades: nothing expires, however long the outage
    recent.add("c", 1200)
    assert "a" not in recent and "b" in recent
    recent.add("d", 1300)
    recent.add("e", 1301)
    assert len(recent) == 3 and "b" not in recent


async def _answer_every_request_with(body: bytes, stream: trio.SocketStream) -> None:
    """A loopback HTTP server's handler: whatever is asked, 200 with ``body``, then close."""
    request = b""
    while b"\r\n\r\n" not in request:
        data = await stream.receive_some(65536)
        if not data:
            return
        request += data
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    await stream.send_all(head.encode() + b"Connection: close\r\n\r\n" + body)
    await stream.aclose()


async def test_a_deeply_nested_rest_answer_is_a_failed_request(autojump_clock: Any) -> None:
    """A REST answer nested too deeply for a recursive JSON parser is an unusable answer, retried
    and then reported like any other: never a RecursionError out of the ingest."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(_answer_every_request_with, b"[" * 100_000), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        async with open_rest_client(
            f"http://127.0.0.1:{port}/trade-api/v2", signing_key=None, wall_ms=wall_ms, rate_per_s=100
        ) as client:
            with pytest.raises(RestUnavailable, match="expected a JSON object"):
                await client.get_json("/markets/KXA-1")
        nursery.cancel_scope.cancel()

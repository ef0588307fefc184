"""The Kalshi source wired into the real server: a fake Kalshi on loopback, hypercorn, v2 clients.

Time is trio's autojump clock and the server's wall clock is derived from it, so minutes of
feed, faults, reconnects and REST backfills pass in milliseconds and every run is the same.
"""

from __future__ import annotations

import gzip
import logging
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_kalshi import FakeKalshi, eventually, session_private_key, write_test_key

from flowboard.aggregate.aggregator import Aggregator
from flowboard.config import Config, make_config
from flowboard.ingest.feed import RawMessage
from flowboard.ingest.kalshi_format import decode_message, trade_from_msg
from flowboard.ingest.recording import decode_line, decode_meta_line
from flowboard.model import MarketMeta
from flowboard.protocol.decoder import ViewState
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.testing.wsclient import WireClient, open_wire_client

REPO = Path(__file__).resolve().parent.parent
BASE_MS = 1_795_800_000_000
KEY_ID = "test-key"


def virtual_wall_ms() -> int:
    return BASE_MS + round(trio.current_time() * 1000)


def kalshi_server_config(fake: FakeKalshi, tmp_path: Path, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "source": "kalshi",
        "kalshi_ws_url": fake.ws_url,
        "kalshi_rest_url": fake.rest_url,
        "kalshi_key_id": KEY_ID,
        "kalshi_private_key": str(write_test_key(tmp_path)),
        "db": str(tmp_path / "flowboard.db"),
        "port": 0,
    }
    settings.update(overrides)
    return make_config(**settings)


class FoldingClient:
    """A v2 client folding every frame into a ViewState, noting the frame index of each event."""

    def __init__(self, client: WireClient) -> None:
        self.client = client
        self.view = ViewState()
        self.frames: list[list[Any]] = []

    async def run(self) -> None:
        while True:
            text = (await self.client.receive()).text
            self.view.apply_frame(text)
            self.frames.append(orjson.loads(text))

    def first_frame(self, predicate: Callable[[list[Any]], bool]) -> int | None:
        for index, frame in enumerate(self.frames):
            if any(predicate(event) for event in frame[1:]):
                return index
        return None


def make_fake(seed: int) -> FakeKalshi:
    return FakeKalshi(
        wall_ms=virtual_wall_ms,
        public_keys={KEY_ID: session_private_key().public_key()},
        require_auth=True,
        seed=seed,
    )


def ws_url(runtime: Runtime) -> str:
    return runtime.url.replace("http://", "ws://") + "/ws"


async def publish_with_faults(fake: FakeKalshi, count: int, rng: random.Random) -> None:
    """``count`` trades at ~5/s; roughly one in ten is a visible gap, a silent loss, a
    duplicate, or follows a dropped connection."""
    for _ in range(count):
        await trio.sleep(rng.expovariate(5.0))
        roll = rng.random()
        delivery: Any = "send"
        if roll < 0.03:
            delivery = "gap"
        elif roll < 0.06:
            delivery = "duplicate"
        elif roll < 0.08:
            delivery = "silent"
        elif roll < 0.10:
            await fake.drop_connections()
        await fake.publish(fake.random_trade(virtual_wall_ms()), delivery=delivery)


async def stored_trade_ids(runtime: Runtime) -> Counter[str]:
    assert runtime.store is not None
    ids: Counter[str] = Counter()
    async for chunk in runtime.store.load_trades_since(0):
        ids.update(trade.trade_id for trade in chunk)
    return ids


async def subscribed(fake: FakeKalshi) -> None:
    await eventually(lambda: any(conn.subscriptions for conn in fake.connections), poll_s=0.01)


async def test_every_kalshi_trade_reaches_aggregator_store_and_client_once(
    tmp_path: Path, autojump_clock: Any
) -> None:
    """Through drops, visible gaps, silent losses and duplicates, the aggregator accepts exactly
    the fake's trades (none lost, none offered twice), the store holds each once, and a v2 client
    is sent every one; metadata from REST reaches aggregator, client (``m``/``i``) and store, each
    market's trade going out before its title."""
    fake = make_fake(seed=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        config = kalshi_server_config(fake, tmp_path)
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        client = FoldingClient(await open_wire_client(ws_url(runtime)))
        nursery.start_soon(client.run)
        await subscribed(fake)

        await publish_with_faults(fake, 400, random.Random(7))
        truth = Counter(trade.trade_id for trade in fake.trades)
        assert (
            fake.faults["gap"] and fake.faults["duplicate"] and fake.faults["silent"] and fake.faults["drop"]
        )
        # Silent losses leave no gap: only the periodic REST reconciliation finds them.
        await eventually(lambda: runtime.agg.trades_total == len(truth), timeout_s=300)
        await trio.sleep(200)  # more reconciliation rounds and metadata saves: nothing changes

        assert runtime.agg.trades_total == len(truth) == 400
        assert runtime.metrics.duplicates._value.get() == 0, "the aggregator was offered a trade twice"
        assert await stored_trade_ids(runtime) == truth
        sent = sum(len(event) - 1 for frame in client.frames for event in frame[1:] if event[0] == "t")
        assert sent == len(truth) and client.view.resyncs == 0

        tickers = {trade.ticker for trade in fake.trades}
        assert runtime.store is not None
        stored_meta = {meta.ticker: meta for meta in await runtime.store.load_meta()}
        for ticker in tickers:
            market = runtime.agg.market_id(ticker)
            assert market is not None
            meta = runtime.agg.meta(market)
            assert meta.title.startswith("Event ") and meta.category
            assert stored_meta[ticker] == meta
            view = client.view.markets[market]
            assert (view.title, view.category) == (meta.title, meta.category)
            first_trade = client.first_frame(
                lambda e, m=market: e[0] == "t" and any(r[0] == m for r in e[1:])
            )
            first_title = client.first_frame(lambda e, m=market: e[0] == "i" and e[1] == m and e[2] != "")
            first_category = client.first_frame(lambda e, m=market: e[0] == "m" and e[1] == m and e[3] != "")
            assert first_trade is not None and first_title is not None and first_category is not None
            assert first_trade < first_title and first_trade < first_category
        nursery.cancel_scope.cancel()
    await client.client.aclose()


async def test_restart_backfills_the_outage_from_rest_without_duplicates(
    tmp_path: Path, autojump_clock: Any
) -> None:
    """Trades stored before a restart stay once; those Kalshi published while the server was
    down are backfilled from REST after it; the rebuilt aggregator and the store hold every
    trade exactly once."""
    fake = make_fake(seed=5)
    rng = random.Random(11)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        # The backfilled trades are older than the remembered ids: the store is asked, from a
        # thread, while the autojump clock races ahead, so the lookup's timeout is set far out.
        config = kalshi_server_config(fake, tmp_path, store_lookup_timeout=3600.0)

        async with trio.open_nursery() as first_run:
            runtime: Runtime = await first_run.start(partial(run_server, config, wall_ms=virtual_wall_ms))
            await subscribed(fake)
            await publish_with_faults(fake, 150, rng)
            await eventually(lambda: runtime.agg.trades_total == len(fake.trades), timeout_s=300)
            runtime.request_stop()
        before = Counter(trade.trade_id for trade in fake.trades)
        assert len(before) == 150

        # Down for ten minutes (longer than the reconciliation looks back) while Kalshi trades on.
        for _ in range(100):
            await trio.sleep(rng.expovariate(1 / 6))
            await fake.publish(fake.random_trade(virtual_wall_ms()))
        assert not fake.connections

        runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        # The start-up backfill, not a later reconciliation round, brings the outage back.
        with trio.fail_after(10):
            await eventually(lambda: runtime.agg.trades_total == len(fake.trades), poll_s=0.01)
        await publish_with_faults(fake, 50, rng)
        truth = Counter(trade.trade_id for trade in fake.trades)
        await eventually(lambda: runtime.agg.trades_total == len(truth), timeout_s=300)
        await trio.sleep(200)

        assert runtime.agg.trades_total == len(truth) == 300
        assert runtime.metrics.duplicates._value.get() == 0
        assert await stored_trade_ids(runtime) == truth
        assert fake.counts["rest:markets/trades"] >= 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("signed", [False, True], ids=["no-key", "wrong-key"])
async def test_auth_refusal_is_reported_plainly_and_retried_with_backoff(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture, signed: bool
) -> None:
    """A Kalshi that refuses the handshake (401) is named in one error line that says what to
    configure; the server keeps running and retries with growing delays; the key's PEM text
    never reaches a log line."""
    fake = make_fake(seed=1)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "other").mkdir()
    pem_path = write_test_key(tmp_path / "other", other_key)
    pem_lines = [line for line in pem_path.read_text().splitlines() if "-----" not in line]
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        if signed:
            config = kalshi_server_config(fake, tmp_path, kalshi_private_key=str(pem_path))
        else:
            config = kalshi_server_config(fake, tmp_path, kalshi_key_id="", kalshi_private_key=None)
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        await trio.sleep(125)
        assert runtime.not_ready == set()
        nursery.cancel_scope.cancel()

    # Backoff 1, 2, 4, ... 60 s (with jitter): a handful of attempts in two minutes, not hundreds.
    assert 4 <= fake.counts["ws_rejected"] == fake.counts["ws_connect"] <= 10
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == fake.counts["ws_rejected"]
    hint = "check the key id and private key" if signed else "needs --kalshi-key-id and --kalshi-private-key"
    assert all("Kalshi refused the connection (HTTP 401" in line and hint in line for line in refusals)
    assert not any(line in caplog.text for line in pem_lines)


@pytest.fixture(scope="module")
def sim_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of the simulator at 50 trades/s, recorded by the real command."""
    path = tmp_path_factory.mktemp("recording") / "sim.jsonl.gz"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "flowboard", "record", "--source", "sim", "--out", str(path)),
            *("--duration", "2", "--rate", "50", "--seed", "4"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("recorded ") and path.stat().st_size > 0
    return path


def recorded(path: Path) -> tuple[list[MarketMeta], list[RawMessage]]:
    metas: list[MarketMeta] = []
    messages: list[RawMessage] = []
    for line in gzip.decompress(path.read_bytes()).splitlines():
        message = decode_line(line)
        if message is not None:
            messages.append(message)
        else:
            meta = decode_meta_line(line)
            assert meta is not None, line
            metas.append(meta)
    return metas, messages


def dashboard_state(agg: Aggregator) -> dict[str, Any]:
    """Everything the dashboard shows, by ticker (market ids depend on arrival order)."""
    markets = agg.market_ids()
    return {
        "now_ms": agg.now_ms,
        "trades_total": agg.trades_total,
        "hot": [agg.ticker(m) for m in agg.hot()],
        "windows": {agg.ticker(m): agg.window(m) for m in markets},
        "sparklines": {agg.ticker(m): agg.sparkline(m) for m in markets},
        "meta": {agg.ticker(m): agg.meta(m) for m in markets},
        "top": agg.top_trades(),
        "tape": agg.recent_trades(agg.tape_size),
        "hour": agg.analytics("hour"),
        "day": agg.analytics("day"),
        "today": agg.today(),
    }


async def test_sim_recording_replays_to_the_same_aggregated_state(
    sim_recording: Path, tmp_path: Path, autojump_clock: Any
) -> None:
    """``flowboard record --source sim`` then ``serve --source replay --speed 0``: the server ends
    in the state of an Aggregator fed the recorded messages through the parser, with the
    simulator's titles and categories. The replay runs on the recording's clock, so a
    recording a year old still fills the windows and the hour view."""
    metas, messages = recorded(sim_recording)
    assert len(messages) > 50 and len(metas) == Config().source.sim_markets
    a_year_later = messages[-1].received_ms + 365 * 24 * 3600 * 1000
    config = make_config(
        source="replay", replay_file=str(sim_recording), speed=0, port=0, db=str(tmp_path / "replay.db")
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(
            partial(run_server, config, wall_ms=lambda: a_year_later + round(trio.current_time() * 1000))
        )
        await eventually(lambda: runtime.agg.trades_total == len(messages), poll_s=0.01)
        replayed = dashboard_state(runtime.agg)
        nursery.cancel_scope.cancel()

    pure = Aggregator()
    for meta in metas:
        pure.set_meta(meta)
    for message in messages:
        pure.add_trade(trade_from_msg(decode_message(message.text).msg), message.received_ms)
    pure.advance(replayed["now_ms"])
    assert replayed == dashboard_state(pure)
    assert messages[-1].received_ms <= replayed["now_ms"] < messages[-1].received_ms + 60_000
    assert replayed["hot"] and all(replayed["meta"][t].title for t in replayed["hot"])
    assert sum(bucket[1] for bucket in replayed["hour"].buckets) == len(messages)


async def test_replay_at_speed_keeps_the_recorded_pace_on_the_dashboard_clock(
    sim_recording: Path, tmp_path: Path, autojump_clock: Any
) -> None:
    """At --speed 4 the dashboard's clock is the recording's, moving four times as fast, and
    the trades in are never ahead of that clock; at the end it has reached the last one's time."""
    _, messages = recorded(sim_recording)
    first, last = messages[0].received_ms, messages[-1].received_ms
    config = make_config(
        source="replay", replay_file=str(sim_recording), speed=4, port=0, db=str(tmp_path / "r.db")
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config))
        before = runtime.wall_ms()
        assert first <= before < last
        await trio.sleep(0.1)
        now = runtime.wall_ms()
        assert now - before == pytest.approx(400, abs=2)
        # Never ahead of the recording's clock. (Not "exactly at it": the replay reads the file
        # in a worker thread, and the autojump clock may jump while that thread runs.)
        for _ in range(20):
            await trio.sleep(0.05)
            now = runtime.wall_ms()
            assert runtime.agg.trades_total <= sum(1 for m in messages if m.received_ms <= now)
        await eventually(lambda: runtime.agg.trades_total == len(messages), poll_s=0.001)
        assert runtime.wall_ms() >= last
        nursery.cancel_scope.cancel()

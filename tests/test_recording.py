"""Record a source to JSON Lines and replay it through the same parser as the live feed."""

from __future__ import annotations

import gzip
import random
from pathlib import Path
from typing import Any

import pytest
import trio

from flowboard.config import SourceConfig
from flowboard.errors import ConfigError
from flowboard.ingest.feed import FeedCounters, FeedItem, RawMessage, Received
from flowboard.ingest.kalshi import KalshiConfig
from flowboard.ingest.kalshi_format import decode_message, encode_envelope, encode_trade_msg, trade_from_msg
from flowboard.ingest.recording import encode_line, encode_meta_line, record, serve_replay
from flowboard.ingest.simulator import Simulator
from flowboard.ingest.sources import open_source
from flowboard.model import MarketMeta, Trade


def _messages(n: int) -> list[RawMessage]:
    rng = random.Random(3)
    out = []
    ts = 1_760_000_000_000
    for seq in range(1, n + 1):
        ts += rng.randint(0, 2000)
        trade = Trade(f"id-{seq}", "FED-23DEC-T3.00", rng.randint(1, 9999), rng.randint(1, 10**5), "yes", ts)
        out.append(
            RawMessage(received_ms=ts + 5, text=encode_envelope(encode_trade_msg(trade), sid=1, seq=seq))
        )
    return out


def _received(message: RawMessage) -> Received:
    """What a live source sends for ``message``: the trade, and the text for the recorder."""
    trade = trade_from_msg(decode_message(message.text).msg)
    return Received(received_ms=message.received_ms, trade=trade, raw=message.text)


async def _record(messages: list[RawMessage], path: Path, **kwargs: Any) -> None:
    send, receive = trio.open_memory_channel[FeedItem](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: record(receive, path, **kwargs))
        async with send:
            for message in messages:
                await send.send(_received(message))


async def _replay(path: Path, speed: float) -> tuple[list[tuple[float, RawMessage]], Any]:
    """The messages a replay sends (as the text each trade was parsed from), with trio's time."""
    got: list[tuple[float, RawMessage]] = []
    send, receive = trio.open_memory_channel[FeedItem](10)

    async def consume() -> None:
        async for item in receive:
            assert isinstance(item, Received) and item.raw is not None
            assert trade_from_msg(decode_message(item.raw).msg) == item.trade
            got.append((trio.current_time(), RawMessage(received_ms=item.received_ms, text=item.raw)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        async with send:
            stats = await serve_replay(path, send, speed=speed)
    return got, stats


@pytest.mark.parametrize("name", ["rec.jsonl", "rec.jsonl.gz"])
async def test_record_then_replay_gives_the_same_trades(
    tmp_path: Path, name: str, autojump_clock: Any
) -> None:
    """What was recorded replays as the same messages, hence the same parsed trades (plain and .gz)."""
    messages = _messages(300)
    path = tmp_path / name
    await _record(messages, path)
    if name.endswith(".gz"):
        assert gzip.decompress(path.read_bytes()).count(b"\n") == 300
    got, stats = await _replay(path, speed=0)
    assert [m for _, m in got] == messages
    assert [trade_from_msg(decode_message(m.text).msg) for _, m in got] == [
        trade_from_msg(decode_message(m.text).msg) for m in messages
    ]
    assert (stats.messages, stats.malformed) == (300, 0)


async def test_replay_keeps_the_recorded_pace(tmp_path: Path, autojump_clock: Any) -> None:
    """At speed 2 each message arrives after half its recorded gap from the first (trio time)."""
    messages = _messages(50)
    path = tmp_path / "rec.jsonl"
    await _record(messages, path)
    start = trio.current_time()
    got, _ = await _replay(path, speed=2.0)
    first = messages[0].received_ms
    for (at, message), original in zip(got, messages, strict=True):
        assert message == original
        assert at - start == pytest.approx((original.received_ms - first) / 1000 / 2, abs=0.01)


async def test_malformed_lines_are_counted_and_skipped(tmp_path: Path, autojump_clock: Any) -> None:
    """Lines that are not recording lines are skipped and counted; the others replay."""
    path = tmp_path / "rec.jsonl"
    good = _messages(2)
    await _record(good, path)
    with path.open("ab") as f:
        f.write(b'not json\n{"received_ms":"x","text":"t"}\n[1]\n\n')
        f.write(path.read_bytes().splitlines()[0] + b"\n")
    got, stats = await _replay(path, speed=0)
    assert [m for _, m in got] == [*good, good[0]]
    assert stats.malformed == 3


async def test_replay_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A recording that cannot be opened stops start-up with its path in the message."""
    send, _receive = trio.open_memory_channel[FeedItem](1)
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConfigError, match=r"cannot read recording .*nope\.jsonl"):
            await nursery.start(
                lambda task_status: serve_replay(tmp_path / "nope.jsonl", send, task_status=task_status)
            )
        not_gzip = tmp_path / "plain.jsonl.gz"
        not_gzip.write_text("plain\n")
        with pytest.raises(ConfigError, match=r"cannot read recording .*plain\.jsonl\.gz"):
            await nursery.start(lambda task_status: serve_replay(not_gzip, send, task_status=task_status))


async def test_recording_a_simulated_source(tmp_path: Path, autojump_clock: Any) -> None:
    """The simulator's trades (never text), recorded and replayed, parse to the same trades."""
    from flowboard.ingest.sources import serve_simulator

    path = tmp_path / "sim.jsonl.gz"
    sent: list[FeedItem] = []
    send, receive = trio.open_memory_channel[FeedItem](100)
    tap_send, tap_receive = trio.open_memory_channel[FeedItem](100)

    async def tap() -> None:
        async with tap_send:
            async for message in receive:
                sent.append(message)
                await tap_send.send(message)
                if len(sent) == 200:
                    return

    def wall_ms() -> int:
        return 1_760_000_000_000 + int(trio.current_time() * 1000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_simulator(Simulator(seed=1, rate=20.0, start_ms=wall_ms()), send, wall_ms=wall_ms)
        )
        nursery.start_soon(tap)
        await record(tap_receive, path)
        nursery.cancel_scope.cancel()
    got, _ = await _replay(path, speed=0)
    assert [(m.received_ms, trade_from_msg(decode_message(m.text).msg)) for _, m in got] == [
        (item.received_ms, item.trade) for item in sent if isinstance(item, Received)
    ]


async def test_replay_through_open_source_parses_once_and_counts(tmp_path: Path, autojump_clock: Any) -> None:
    """``open_source`` with --source replay: metadata and parsed trades come down the one channel
    in file order; a line whose text is not a usable message is counted (the server's
    flowboard_feed_malformed) and skipped, and every message is counted by its type."""
    # A parlay's collection survives the recording: replayed, it is still left out of rankings.
    meta = MarketMeta("FED-23DEC-T3.00", title="Fed rate", mve_collection_ticker="KXMVECROSS")
    good = _messages(1)[0]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(
        encode_meta_line(meta)
        + encode_line(good)
        + encode_line(RawMessage(received_ms=good.received_ms, text="garbage"))
        + encode_line(RawMessage(received_ms=good.received_ms, text='{"type":"ticker","msg":{}}'))
    )
    counted: list[str] = []
    counters = FeedCounters(message=counted.append, malformed=lambda: counted.append("malformed"))
    config = SourceConfig(kind="replay", replay_file=str(path), speed=0)
    send, receive = trio.open_memory_channel[FeedItem](10)
    async with send:
        serve = open_source(config, KalshiConfig(), send, wall_ms=lambda: 0, counters=counters)
        await serve()
    assert [item async for item in receive] == [meta, _received(good)]
    assert counted == ["trade", "malformed", "ticker"]

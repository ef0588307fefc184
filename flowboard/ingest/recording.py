"""Record a source's raw messages to JSON Lines, and replay them as a source.

A recording is one JSON object per line, ``{"received_ms": <int>, "text": "<raw message>"}``,
gzip-compressed when the path ends with ``.gz`` (or when asked). A replay parses each line's
text with the same :class:`~flowboard.ingest.feed.FeedParser` as the live feed, so a recording
exercises exactly the parsing and aggregation the live feed does. A trade that reached the
recorder without text (the simulator's, Kalshi's REST backfill) is written as Kalshi's current
WebSocket ``trade`` message.

A recording may also hold market metadata, one market per line as ``{"meta": {"ticker": ...,
"title": ..., "category": ..., "close_ts_ms": ..., "event_ticker": ..., "series_ticker": ...}}``
(the simulator's markets are written first), so a replay shows titles and categories. Kalshi
recordings hold the feed only: Kalshi's metadata comes from REST, not the feed.

A replay runs on the recording's own clock (:class:`ReplayClock`): the dashboard shows the
recorded time, so a recording of any age fills the windows and charts as it did live.

File I/O runs in worker threads, a batch of lines at a time, so the event loop never
waits on the disk.
"""

from __future__ import annotations

import gzip as gzip_module
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, cast

import attrs
import orjson
import trio

from flowboard.errors import ConfigError
from flowboard.ingest.feed import FeedCounters, FeedItem, FeedParser, RawMessage, Received
from flowboard.ingest.kalshi_format import encode_envelope, encode_trade_msg
from flowboard.model import MarketMeta

log = logging.getLogger(__name__)

#: Lines moved per worker-thread call.
BATCH_LINES = 1000


def _is_gzip(path: Path, gzip: bool) -> bool:
    return gzip or path.suffix == ".gz"


#: The subscription id written with trades that came without text, as if subscribed once.
RECORDED_SID = 1


def encode_line(message: RawMessage) -> bytes:
    """One recording line (with its newline)."""
    return orjson.dumps({"received_ms": message.received_ms, "text": message.text}) + b"\n"


def encode_item(item: FeedItem) -> bytes:
    """The recording line of what a source sent: its text as received, or else the trade (or
    the market's metadata) written out."""
    if isinstance(item, MarketMeta):
        return encode_meta_line(item)
    text = item.raw
    if text is None:
        text = encode_envelope(encode_trade_msg(item.trade), sid=RECORDED_SID, seq=None)
    return encode_line(RawMessage(received_ms=item.received_ms, text=text))


def decode_line(line: bytes) -> RawMessage | None:
    """The message on one recording line, or None when the line is not one."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    received_ms = obj.get("received_ms")
    text = obj.get("text")
    if not isinstance(received_ms, int) or isinstance(received_ms, bool) or not isinstance(text, str):
        return None
    return RawMessage(received_ms=received_ms, text=text)


def encode_meta_line(meta: MarketMeta) -> bytes:
    """One metadata line (with its newline)."""
    return orjson.dumps({"meta": attrs.asdict(meta)}) + b"\n"


def decode_meta_line(line: bytes) -> MarketMeta | None:
    """The market metadata on one recording line, or None when the line is not metadata."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    meta: Any = obj.get("meta") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("ticker"), str) or not meta["ticker"]:
        return None
    texts = {
        name: meta.get(name, "")
        for name in ("title", "category", "event_ticker", "series_ticker", "mve_collection_ticker")
    }
    numbers: dict[str, Any] = {name: meta.get(name) for name in ("close_ts_ms", "open_interest", "liquidity")}
    if not all(isinstance(value, str) for value in texts.values()):
        return None
    if any(
        value is not None and (not isinstance(value, int) or isinstance(value, bool))
        for value in numbers.values()
    ):
        return None
    return MarketMeta(ticker=meta["ticker"], **texts, **numbers)


class ReplayClock:
    """The time in a replay, Unix ms: the recording's clock at ``speed`` x trio's.

    It stands at the first recorded message until :meth:`begin` (the replay starts). At
    speed 0 it stands still between messages and jumps to each one as it is played. After
    the last message it runs on at the replay speed (real speed after a speed-0 replay),
    like a live feed gone quiet.
    """

    def __init__(self, start_ms: int, speed: float) -> None:
        self._speed = speed
        self._rate = 0.0  # recorded ms per trio ms
        self._anchor_ms = start_ms  # the replay time at _anchor_t
        self._anchor_t = trio.current_time()

    def begin(self) -> None:
        self._reanchor(self.now_ms(), self._speed)

    def now_ms(self) -> int:
        return self._anchor_ms + int((trio.current_time() - self._anchor_t) * 1000 * self._rate)

    def time_of(self, received_ms: int) -> float:
        """The trio time this clock reaches ``received_ms`` (speed > 0)."""
        return self._anchor_t + (received_ms - self._anchor_ms) / 1000 / self._rate

    def played(self, received_ms: int) -> None:
        """A message recorded at ``received_ms`` is being played: the clock is at least there."""
        if received_ms > self.now_ms():
            self._reanchor(received_ms, self._rate)

    def ended(self) -> None:
        self._reanchor(self.now_ms(), self._speed or 1.0)

    def _reanchor(self, at_ms: int, rate: float) -> None:
        self._anchor_ms = at_ms
        self._anchor_t = trio.current_time()
        self._rate = rate


async def open_replay_clock(path: str | Path, speed: float, *, default_ms: int) -> ReplayClock:
    """A clock for replaying ``path``, set to its first message (``default_ms`` when it has none)."""
    where = Path(path)
    try:
        first_ms = await trio.to_thread.run_sync(_first_received_ms, where)
    except OSError as exc:
        raise ConfigError(f"cannot read recording {where}: {exc.strerror or exc}") from None
    return ReplayClock(default_ms if first_ms is None else first_ms, speed)


def _first_received_ms(path: Path) -> int | None:
    with _open_for_reading(path, _is_gzip(path, False)) as handle:
        try:
            for line in handle:
                message = decode_line(line)
                if message is not None:
                    return message.received_ms
        except EOFError:  # a truncated gzip stream
            pass
    return None


@attrs.frozen
class RecordStatistics:
    messages: int


async def record(
    source_messages: trio.MemoryReceiveChannel[FeedItem],
    out_path: str | Path,
    gzip: bool = False,
    *,
    metas: Iterable[MarketMeta] = (),
) -> RecordStatistics:
    """Write ``metas``, then everything from ``source_messages`` to ``out_path`` until the
    channel closes. ``messages`` counts what came from the channel."""
    path = Path(out_path)
    try:
        handle: IO[bytes] = await trio.to_thread.run_sync(_open_for_writing, path, _is_gzip(path, gzip))
    except OSError as exc:
        raise ConfigError(f"cannot write recording {path}: {exc.strerror or exc}") from None
    written = 0
    try:
        header = b"".join(encode_meta_line(meta) for meta in metas)
        if header:
            await trio.to_thread.run_sync(handle.write, header)
        async for first in source_messages:
            batch = [encode_item(first)]
            while len(batch) < BATCH_LINES:
                try:
                    batch.append(encode_item(source_messages.receive_nowait()))
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await trio.to_thread.run_sync(handle.write, b"".join(batch))
            written += len(batch)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(handle.close)
    return RecordStatistics(messages=written)


def _open_for_writing(path: Path, gzip: bool) -> IO[bytes]:
    if gzip:
        return cast(IO[bytes], gzip_module.open(path, "wb"))
    return path.open("wb")


@attrs.frozen
class ReplayStatistics:
    messages: int
    malformed: int  # lines that are not a recording line (skipped)
    metas: int = 0  # metadata lines


async def serve_replay(
    path: str | Path,
    send: trio.MemorySendChannel[FeedItem],
    *,
    speed: float = 1.0,
    gzip: bool = False,
    clock: ReplayClock | None = None,
    counters: FeedCounters | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> ReplayStatistics:
    """Feed the recording at ``path`` to ``send`` at ``speed`` x the recorded pace.

    ``speed`` 0 replays as fast as ``send`` accepts. The recorded gaps are waited out
    with ``trio.sleep`` (so tests can use the autojump clock). Each message keeps its
    recorded ``received_ms``; ``clock`` (made here when not given) follows the replay.
    Each message is parsed (``counters`` count them, and the malformed ones, which are
    skipped); metadata lines are sent when they are reached. Returns at the end of
    the file; ``send`` stays open. Raises ``ConfigError`` (before reporting started) when
    the file cannot be opened.
    """
    if speed < 0:
        raise ConfigError(f"--speed: expected a number >= 0, got {speed}")
    where = Path(path)
    try:
        handle: IO[bytes] = await trio.to_thread.run_sync(_open_for_reading, where, _is_gzip(where, gzip))
    except OSError as exc:
        raise ConfigError(f"cannot read recording {where}: {exc.strerror or exc}") from None
    task_status.started()
    if clock is not None:
        clock.begin()
    parser = FeedParser(counters)
    messages = malformed = metas = 0
    try:
        while True:
            try:
                lines = await trio.to_thread.run_sync(handle.readlines, 1 << 20)
            except (OSError, EOFError) as exc:  # a truncated gzip stream ends the replay
                log.warning("replay: %s ends early: %s", where, exc)
                break
            if not lines:
                break
            for line in lines:
                if not line.strip():
                    continue
                message = decode_line(line)
                if message is None:
                    meta = decode_meta_line(line)
                    if meta is None:
                        malformed += 1
                    else:
                        await send.send(meta)
                        metas += 1
                    continue
                if clock is None:
                    clock = ReplayClock(message.received_ms, speed)
                    clock.begin()
                if speed > 0:
                    await trio.sleep_until(clock.time_of(message.received_ms))
                else:
                    clock.played(message.received_ms)
                messages += 1
                trade = parser.parse(message.text)
                if trade is not None:
                    await send.send(Received(received_ms=message.received_ms, trade=trade, raw=message.text))
            await trio.lowlevel.checkpoint()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(handle.close)
    if clock is not None:
        clock.ended()
    log.info("replay of %s done: %d messages, %d malformed lines skipped", where, messages, malformed)
    return ReplayStatistics(messages=messages, malformed=malformed, metas=metas)


def _open_for_reading(path: Path, gzip: bool) -> IO[bytes]:
    if gzip:
        handle = gzip_module.GzipFile(path, "rb")
        try:
            handle.peek(1)  # fail now, not mid-replay, when the file is not gzip
        except BaseException:
            handle.close()
            raise
        return cast(IO[bytes], handle)
    return path.open("rb")

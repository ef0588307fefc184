"""Record a source's raw messages to JSON Lines, and replay them as a source.

A recording is one JSON object per line, ``{"received_ms": <int>, "text": "<raw message>"}``,
gzip-compressed when the path ends with ``.gz`` (or when asked). Replaying feeds the
same :class:`~flowboard.ingest.sources.RawMessage` path as a live source, so a recording
exercises exactly the parsing and aggregation the live feed does.

File I/O runs in worker threads, a batch of lines at a time, so the event loop never
waits on the disk.
"""

from __future__ import annotations

import gzip as gzip_module
import logging
from pathlib import Path
from typing import IO, cast

import attrs
import orjson
import trio

from flowboard.errors import ConfigError
from flowboard.ingest.sources import RawMessage

log = logging.getLogger(__name__)

#: Lines moved per worker-thread call.
BATCH_LINES = 1000


def _is_gzip(path: Path, gzip: bool) -> bool:
    return gzip or path.suffix == ".gz"


def encode_line(message: RawMessage) -> bytes:
    """One recording line (with its newline)."""
    return orjson.dumps({"received_ms": message.received_ms, "text": message.text}) + b"\n"


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


@attrs.frozen
class RecordStatistics:
    messages: int


async def record(
    source_messages: trio.MemoryReceiveChannel[RawMessage],
    out_path: str | Path,
    gzip: bool = False,
) -> RecordStatistics:
    """Write every message from ``source_messages`` to ``out_path`` until the channel closes."""
    path = Path(out_path)
    try:
        handle: IO[bytes] = await trio.to_thread.run_sync(_open_for_writing, path, _is_gzip(path, gzip))
    except OSError as exc:
        raise ConfigError(f"cannot write recording {path}: {exc.strerror or exc}") from None
    written = 0
    try:
        async for first in source_messages:
            batch = [encode_line(first)]
            while len(batch) < BATCH_LINES:
                try:
                    batch.append(encode_line(source_messages.receive_nowait()))
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


async def serve_replay(
    path: str | Path,
    send: trio.MemorySendChannel[RawMessage],
    *,
    speed: float = 1.0,
    gzip: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> ReplayStatistics:
    """Feed the recording at ``path`` to ``send`` at ``speed`` x the recorded pace.

    ``speed`` 0 replays as fast as ``send`` accepts. The recorded gaps are waited out
    with ``trio.sleep`` (so tests can use the autojump clock). Each message keeps its
    recorded ``received_ms``. Returns at the end of the file; ``send`` stays open.
    Raises ``ConfigError`` (before reporting started) when the file cannot be opened.
    """
    if speed < 0:
        raise ConfigError(f"--speed: expected a number >= 0, got {speed}")
    where = Path(path)
    try:
        handle: IO[bytes] = await trio.to_thread.run_sync(_open_for_reading, where, _is_gzip(where, gzip))
    except OSError as exc:
        raise ConfigError(f"cannot read recording {where}: {exc.strerror or exc}") from None
    task_status.started()
    messages = malformed = 0
    first_ms: int | None = None
    start = trio.current_time()
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
                    malformed += 1
                    continue
                if first_ms is None:
                    first_ms = message.received_ms
                if speed > 0:
                    await trio.sleep_until(start + max(0, message.received_ms - first_ms) / 1000 / speed)
                await send.send(message)
                messages += 1
            await trio.lowlevel.checkpoint()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(handle.close)
    log.info("replay of %s done: %d messages, %d malformed lines skipped", where, messages, malformed)
    return ReplayStatistics(messages=messages, malformed=malformed)


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

"""Our second extension point into hypercorn: v2 frames written straight to the connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import trio

from flowboard.config import Config
from flowboard.protocol import v2
from flowboard.protocol.decoder import ViewState
from flowboard.server import direct
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.testing.wsclient import ConnectionClosed, open_wire_client

BASE_MS = 1_795_800_000_000


@pytest.fixture
async def server(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> AsyncIterator[Runtime]:
    config = Config(port=0, rate=20.0, seed=11, sim_history_s=60.0, db=str(tmp_path / "f.db"))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(
            partial(run_server, config, wall_ms=lambda: BASE_MS + round(trio.current_time() * 1000))
        )
        yield runtime
        nursery.cancel_scope.cancel()


def ws_url(runtime: Runtime) -> str:
    return runtime.url.replace("http://", "ws://") + "/ws"


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[direct.DirectWriter | None]:
    """Every writer ``writer_for`` hands out (None where it found no hypercorn connection)."""
    made: list[direct.DirectWriter | None] = []
    real = direct.writer_for

    def recording(scope: Any) -> direct.DirectWriter | None:
        made.append(real(scope))
        return made[-1]

    monkeypatch.setattr(direct, "writer_for", recording)
    return made


def test_hypercorn_is_the_version_whose_internals_we_walk() -> None:
    """writer_for walks hypercorn 0.18.0's WSStream -> H11Protocol -> TCPServer: re-check on upgrade."""
    assert version("hypercorn") == "0.18.0"


def test_a_scope_without_hypercorns_send_gets_no_writer() -> None:
    """Another server (or quart's test client) leaves the connection on quart's path."""

    async def foreign_send(message: Any) -> None:
        pass

    assert direct.writer_for({}) is None
    assert direct.writer_for({direct.SCOPE_KEY: foreign_send}) is None


async def test_frames_go_direct_and_decode_over_deflate(
    server: Runtime, writers: list[direct.DirectWriter | None], autojump_clock: trio.testing.MockClock
) -> None:
    """Through the real hypercorn every connection gets a writer, the frames it writes whole skip
    quart, and the compressed stream (deflate context shared with hypercorn's own frames) decodes."""
    client = await open_wire_client(ws_url(server), deflate=True)
    assert client.deflate_negotiated
    view = ViewState()
    frames = 0
    with trio.move_on_after(10):
        while True:
            view.apply_frame((await client.receive()).text)
            frames += 1
    assert frames > 20
    assert len(writers) == 1
    writer = writers[0]
    assert writer is not None, "hypercorn's internals changed: see flowboard/server/direct.py"
    assert writer.direct >= frames - 1
    assert view.seq > 0
    await client.aclose()


async def test_a_frame_the_socket_takes_in_part_is_finished_by_hypercorn(
    server: Runtime, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """When the kernel takes only part of a frame, hypercorn writes the rest: the stream stays whole."""
    real_write = direct.os.write

    def half_write(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data)[: max(1, len(data) // 2)])

    monkeypatch.setattr(direct.os, "write", half_write)
    client = await open_wire_client(ws_url(server), deflate=True)
    view = ViewState()
    with trio.move_on_after(5):
        while True:
            view.apply_frame((await client.receive()).text)
    assert view.seq > 0 and view.summary()["hot"]
    await client.aclose()


async def test_a_hopeless_client_is_closed_with_4008_and_its_reason_after_direct_frames(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """The close frame goes through hypercorn after the direct data frames, intact and in order."""
    client = await open_wire_client(ws_url(server), deflate=True)
    await client.receive()
    with trio.move_on_after(3):
        while True:
            await client.receive()
    connected = next(iter(server.hub.clients))
    connected.session.close_reason = "too slow: test"
    connected.wake()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.receive()
    await client.aclose()
    assert closed.value.code == v2.CLOSE_TOO_SLOW
    assert closed.value.reason == "too slow: test"


async def test_the_publisher_writes_a_waiting_clients_frames_itself(
    server: Runtime, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """While a send loop waits, Hub.publish writes its frame (no task wake-up); the stream decodes."""
    from flowboard.server import websocket

    flushed: list[bool] = []
    real = websocket._Sender.flush_nowait

    def recording(self: websocket._Sender, now_ms: int) -> bool:
        flushed.append(real(self, now_ms))
        return flushed[-1]

    monkeypatch.setattr(websocket._Sender, "flush_nowait", recording)
    client = await open_wire_client(ws_url(server), deflate=True)
    view = ViewState()
    with trio.move_on_after(10):
        while True:
            view.apply_frame((await client.receive()).text)
    assert sum(flushed) > 20
    assert view.seq == server.hub.seq
    await client.aclose()

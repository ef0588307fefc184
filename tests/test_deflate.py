"""Our extension point into hypercorn: permessage-deflate with a bounded window and memory."""

from __future__ import annotations

import logging
import random
import string
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.protocol import ws_stream
from test_crash import serving
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode, RsvBits
from wsproto.handshake import server_extensions_handshake

from flowboard.config import make_config
from flowboard.errors import DeflateOfferError
from flowboard.protocol import v2
from flowboard.server import deflate
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.testing.wsclient import ConnectionClosed, open_wire_client

BASE_MS = 1_795_800_000_000


def test_default_settings_keep_the_compressor_at_24_kib() -> None:
    """zlib's deflate memory for the defaults is 2**14 + 2**13 bytes, well under the 64 KiB budget."""
    assert deflate.DeflateSettings().compressor_bytes == 24 * 1024


def test_browser_offer_is_answered_with_our_window() -> None:
    """Chromium's offer (client_max_window_bits without a value) gets our bits for both sides."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=12))
    response = extension.accept("permessage-deflate; client_max_window_bits")
    assert isinstance(response, str)
    assert "server_max_window_bits=12" in response
    assert "client_max_window_bits=12" in response
    assert "no_context_takeover" not in response


def test_a_smaller_window_asked_by_the_client_is_honoured() -> None:
    """A client may ask for a smaller server window than ours; never a bigger one."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=13))
    assert "server_max_window_bits=10" in str(
        extension.accept("permessage-deflate; server_max_window_bits=10")
    )
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=13))
    assert "server_max_window_bits=13" in str(
        extension.accept("permessage-deflate; server_max_window_bits=15")
    )


def test_disabled_declines_the_offer() -> None:
    """With compression off the extension is not negotiated at all."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(enabled=False))
    assert extension.accept("permessage-deflate; client_max_window_bits") is None


def test_compressor_uses_the_configured_window_and_mem_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compressor is created with our window bits and memLevel, and its output inflates back."""
    created: list[tuple[Any, ...]] = []
    real_compressobj = zlib.compressobj

    def recording_compressobj(*args: Any) -> Any:
        created.append(args)
        return real_compressobj(*args)

    monkeypatch.setattr(deflate.zlib, "compressobj", recording_compressobj)
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=11, mem_level=4, level=6))
    extension.accept("permessage-deflate")
    proto = FrameProtocol(client=False, extensions=[extension])
    payload = b'[1043,["t",[7,3600,10000,1,152]]]' * 3
    _, compressed = extension.frame_outbound(proto, Opcode.TEXT, RsvBits(False, False, False), payload, True)
    assert created == [(6, zlib.DEFLATED, -11, 4)]
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(compressed + b"\x00\x00\xff\xff") == payload


def test_install_replaces_and_uninstall_restores_hypercorns_extension() -> None:
    """The hook is the one name hypercorn's handshake looks up."""
    deflate.install(deflate.DeflateSettings(window_bits=10))
    try:
        made = ws_stream.PerMessageDeflate()  # type: ignore[attr-defined]
        assert isinstance(made, deflate.BoundedDeflate)
        assert made.settings.window_bits == 10
    finally:
        deflate.uninstall()
    assert ws_stream.PerMessageDeflate is PerMessageDeflate  # type: ignore[attr-defined]


@pytest.mark.parametrize("enabled", [True, False])
async def test_real_server_negotiates_per_configuration(
    enabled: bool, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Through hypercorn: the handshake carries our window, or no deflate with --no-deflate."""
    config = make_config(
        port=0, sim_history=10.0, deflate=enabled, deflate_window_bits=12, db=str(tmp_path / "f.db")
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(
            partial(run_server, config, wall_ms=lambda: BASE_MS + round(trio.current_time() * 1000))
        )
        client = await open_wire_client(runtime.url.replace("http://", "ws://") + "/ws", deflate=True)
        assert client.deflate_negotiated is enabled
        message = await client.receive()
        assert message.text.startswith("[")
        await client.aclose()
        nursery.cancel_scope.cancel()


# -- inbound: a compressed message may not inflate past the command limit ----------------------

MASK = b"\x37\xfa\x21\x3d"


def client_frame(payload: bytes, *, opcode: Opcode, compressed: bool, fin: bool = True) -> bytes:
    """One masked client frame around ``payload`` (already deflated when ``compressed``)."""
    first = (0x80 if fin else 0) | (0x40 if compressed else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes([first, 0x80 | length])
    elif length < 1 << 16:
        header = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
    key = int.from_bytes((MASK * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big") if length else b""
    return header + MASK + masked


def deflated(text_bytes: int, *, chunk: int = 1 << 20) -> bytes:
    """``text_bytes`` spaces, raw-deflated as a permessage-deflate message (flush tail removed)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [
        compressor.compress(b" " * min(chunk, text_bytes - sent)) for sent in range(0, text_bytes, chunk)
    ]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


#: 60 MiB of text in about 60 KB: the bomb of issue 10.
BOMB_TEXT_BYTES = 60 << 20


def memory_kib(pid: int) -> dict[str, int]:
    """The process's peak and current resident memory (VmHWM, VmRSS) in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/ws", "/ws/stream"])
async def test_a_deflate_bomb_is_refused_with_1009_before_it_inflates(path: str, tmp_path: Path) -> None:
    """A real ``flowboard serve``: a ~60 KB frame that inflates to 60 MiB closes its connection with
    1009, the server's peak and current RSS grow by less than 5 MiB, and a client connected at the
    same time keeps receiving frames."""
    bomb = client_frame(deflated(BOMB_TEXT_BYTES), opcode=Opcode.TEXT, compressed=True)
    assert len(bomb) < 70_000
    with serving("--db", str(tmp_path / "f.db"), "--rate", "20", "--sim-history", "60") as (process, url):
        base = url.replace("http://", "ws://")
        with trio.fail_after(20):
            bystander = await open_wire_client(base + path)
            await bystander.receive()
            attacker = await open_wire_client(base + path)
            assert attacker.deflate_negotiated
            await attacker.receive()
        before = memory_kib(process.pid)
        await attacker.send_raw(bomb)
        with trio.fail_after(20), pytest.raises(ConnectionClosed) as closed:
            while True:
                await attacker.receive()
        after = memory_kib(process.pid)
        refused_at = trio.current_time()
        await attacker.aclose()
        with trio.fail_after(10):
            while (await bystander.receive()).received_at <= refused_at:
                pass
        await bystander.aclose()
    assert closed.value.code == 1009
    assert after["VmHWM"] - before["VmHWM"] < 5 * 1024, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < 5 * 1024, (before, after)


def server_connection(**settings: Any) -> tuple[deflate.FailClosingConnection, deflate.BoundedDeflate]:
    """A server connection as hypercorn makes it, after a browser's offer."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(**settings))
    assert extension.accept("permessage-deflate; client_max_window_bits")
    return deflate.FailClosingConnection(ConnectionType.SERVER, [extension]), extension


def message_frames(text: bytes, parts: int) -> list[bytes]:
    """``text`` as one compressed message in ``parts`` frames, as a client compresses it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -12)
    data = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    size = -(-len(data) // parts)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return [
        client_frame(
            chunk,
            opcode=Opcode.TEXT if index == 0 else Opcode.CONTINUATION,
            compressed=index == 0,
            fin=index == len(chunks) - 1,
        )
        for index, chunk in enumerate(chunks)
    ]


def received(connection: deflate.FailClosingConnection, data: bytes) -> tuple[str, list[CloseConnection]]:
    """The text the connection yields for ``data``, and the close events."""
    connection.receive_data(data)
    events = list(connection.events())
    text = "".join(e.data for e in events if isinstance(e, TextMessage))
    return text, [e for e in events if isinstance(e, CloseConnection)]


def test_a_frame_that_inflates_past_the_limit_is_refused_with_1009() -> None:
    """One small frame that inflates to 1 MiB: refused, with a reason, after at most 64 KiB + 1."""
    connection, _ = server_connection()
    text, closes = received(connection, message_frames(b" " * (1 << 20), 1)[0])
    assert len(text) <= v2.MAX_COMMAND_BYTES
    assert [(c.code, c.reason) for c in closes] == [(1009, "message inflates past 65536 bytes")]
    # Failed, not just reported: hypercorn answers a remote-closing connection with a close frame.
    assert connection.state is ConnectionState.REMOTE_CLOSING


def test_the_limit_counts_a_fragmented_message_across_its_frames() -> None:
    """Five frames of 20 KiB each: each is under the limit, the message is not."""
    counted: list[str] = []
    connection, _ = server_connection()
    connection._deflate.counters = deflate.DeflateCounters(oversized_message=lambda: counted.append("x"))  # type: ignore[union-attr]
    text, closes = received(connection, b"".join(message_frames(b"x" * (100 * 1024), 5)))
    assert len(text) <= v2.MAX_COMMAND_BYTES
    assert [c.code for c in closes] == [1009]
    assert counted == ["x"]


def test_messages_up_to_the_limit_pass_and_the_count_starts_again_for_each() -> None:
    """Messages of exactly 64 KiB (fragmented, a ping between two fragments) all arrive whole."""
    connection, _ = server_connection()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -12)
    for round_ in range(3):
        body = (b'["x",%d]' % round_).ljust(v2.MAX_COMMAND_BYTES, b" ")
        data = (compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        half = len(data) // 2
        ping = client_frame(b"hi", opcode=Opcode.PING, compressed=False)
        first = client_frame(data[:half], opcode=Opcode.TEXT, compressed=True, fin=False)
        rest = client_frame(data[half:], opcode=Opcode.CONTINUATION, compressed=False)
        text, closes = received(connection, first + ping + rest)
        assert closes == []
        assert text == body.decode()


def test_a_client_that_was_not_limited_may_use_a_32_kib_window() -> None:
    """An offer without client_max_window_bits leaves the client its 15-bit window: we must
    inflate with that, or a message that refers back to the previous one (context takeover)
    further than our own 4 KiB window fails."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=12))
    response = extension.accept("permessage-deflate")
    assert isinstance(response, str) and "client_max_window_bits" not in response
    connection = deflate.FailClosingConnection(ConnectionType.SERVER, [extension])
    rng = random.Random(3)
    text = "".join(rng.choice(string.ascii_letters) for _ in range(10_000)).encode()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    for _ in range(2):
        data = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        received_text, closes = received(connection, client_frame(data, opcode=Opcode.TEXT, compressed=True))
        assert closes == []
        assert received_text == text.decode()


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=99999999999999999999",
        "permessage-deflate; client_max_window_bits=012",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=11",
        "permessage-deflate; server_no_context_takeover=yes",
        "permessage-deflate; x-webkit-junk",
        "permessage-deflate; ;;=;",
    ],
)
def test_a_malformed_offer_is_declined_and_counted(offer: str) -> None:
    """RFC 7692 says decline an offer with an unknown, repeated or invalid parameter: no deflate."""
    declined: list[str] = []
    extension = deflate.BoundedDeflate(
        deflate.DeflateSettings(), deflate.DeflateCounters(declined_offer=lambda: declined.append(offer))
    )
    assert extension.accept(offer) is None
    assert not extension.enabled()
    assert declined == [offer]
    with pytest.raises(DeflateOfferError, match=r"expected .*, got"):
        deflate.parse_offer(offer)


def test_the_first_offer_we_can_take_stands() -> None:
    """A header with a malformed offer and then a good one negotiates the good one; a later offer
    does not change what was agreed."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=12))
    header = [
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=9; client_no_context_takeover",
    ]
    agreed = server_extensions_handshake(header, [extension])
    assert agreed == b"permessage-deflate; server_max_window_bits=10"
    assert extension.server_max_window_bits == 10
    assert not extension.client_no_context_takeover


def test_quoted_values_are_read_and_8_bit_server_windows_declined() -> None:
    """RFC 7692 allows quoted values; zlib cannot compress with a 256-byte window."""
    assert deflate.parse_offer('permessage-deflate; client_max_window_bits="10"').client_max_window_bits == 10
    extension = deflate.BoundedDeflate(deflate.DeflateSettings())
    assert extension.accept("permessage-deflate; server_max_window_bits=8") is None


async def test_real_server_serves_a_malformed_offer_uncompressed_with_one_log_line(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through hypercorn: ``server_max_window_bits=abc`` gets 101 without deflate, frames that are
    not compressed, one INFO line and nothing worse in the log, and a count in /metrics."""
    caplog.set_level(logging.INFO)
    config = make_config(port=0, sim_history=10.0, db=str(tmp_path / "f.db"))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(
            partial(run_server, config, wall_ms=lambda: BASE_MS + round(trio.current_time() * 1000))
        )
        host, port = runtime.url.removeprefix("http://").rsplit(":", 1)
        caplog.clear()
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=abc\r\n\r\n"
                % (host.encode(), port.encode())
            )
            answer = b""
            with trio.fail_after(10):
                while b"\r\n\r\n" not in answer and (data := await stream.receive_some(65536)):
                    answer += data
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), answer
            assert b"sec-websocket-extensions" not in head.lower()
            connection = Connection(ConnectionType.CLIENT)  # no deflate: a compressed frame fails to parse
            connection.receive_data(rest)
            with trio.fail_after(10):
                while not (events := list(connection.events())):
                    connection.receive_data(await stream.receive_some(65536) or None)
            assert isinstance(events[0], TextMessage) and events[0].data.startswith("[")
        async with httpx.AsyncClient(base_url=runtime.url) as http:
            metrics = (await http.get("/metrics")).text
        nursery.cancel_scope.cancel()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [m for level, m in lines if level >= logging.WARNING] == []
    declined = [m for _, m in lines if "permessage-deflate" in m]
    assert declined == [
        "declined a permessage-deflate offer (server_max_window_bits: expected window bits from 8 to 15, "
        "got 'abc'): serving this WebSocket uncompressed"
    ]
    assert "flowboard_client_deflate_offers_declined_total 1.0" in metrics

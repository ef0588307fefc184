"""One writer per WebSocket connection: every byte after the handshake leaves in order."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from wsproto.events import Ping
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode

from flowboard.config import make_config
from flowboard.protocol import v2
from flowboard.protocol.decoder import ViewState, expected_summary
from flowboard.server import connection
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.testing.wsclient import ConnectionClosed, open_wire_client

BASE_MS = 1_795_800_000_000


@pytest.fixture
async def server(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> AsyncIterator[Runtime]:
    config = make_config(port=0, rate=200.0, seed=11, sim_history=60.0, db=str(tmp_path / "f.db"))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(
            partial(run_server, config, wall_ms=lambda: BASE_MS + round(trio.current_time() * 1000))
        )
        yield runtime
        nursery.cancel_scope.cancel()


def ws_url(runtime: Runtime) -> str:
    return runtime.url.replace("http://", "ws://") + "/ws"


# -- the pure parts: framing and compression ---------------------------------------------------


def _client_decoder(deflate_offer: str | None) -> FrameProtocol:
    """wsproto's client-side frame decoder, with permessage-deflate as negotiated, if at all."""
    extensions = []
    if deflate_offer is not None:
        extension = PerMessageDeflate()
        extension.finalize(deflate_offer)
        extensions.append(extension)
    return FrameProtocol(client=True, extensions=extensions)


@given(st.lists(st.text(max_size=300) | st.sampled_from(["x" * 125, "y" * 126, "z" * 65_535, "w" * 65_536])))
def test_plain_frames_parse_as_text_messages_in_wsprotos_client(texts: list[str]) -> None:
    """Our frame header (7-, 16- and 64-bit lengths, FIN, text, unmasked) reads back exactly."""
    decoder = _client_decoder(None)
    decoder.receive_bytes(b"".join(connection.text_frame(t.encode(), compressed=False) for t in texts))
    frames = list(decoder.received_frames())
    assert [(f.opcode, f.payload, f.message_finished) for f in frames] == [
        (Opcode.TEXT, t, True) for t in texts
    ]


@given(
    st.lists(st.binary(max_size=3_000).map(lambda b: b.hex()), min_size=1, max_size=8),
    st.sampled_from([9, 12, 15]),
    st.booleans(),
)
def test_deflated_frames_inflate_in_wsprotos_client(texts: list[str], bits: int, takeover: bool) -> None:
    """Compressed with the negotiated window and context takeover (or not), every message
    inflates to its text in a client that negotiated the same."""
    offer = f"permessage-deflate; server_max_window_bits={bits}"
    if not takeover:
        offer += "; server_no_context_takeover"
    decoder = _client_decoder(offer)
    deflater = connection.MessageDeflater(
        connection.DeflateVariant(window_bits=bits, mem_level=4, level=6, context_takeover=takeover)
    )
    wire = b"".join(connection.text_frame(deflater.compress(t.encode()), compressed=True) for t in texts)
    decoder.receive_bytes(wire)
    assert [f.payload for f in decoder.received_frames()] == texts


def test_context_takeover_makes_a_repeated_message_smaller() -> None:
    """With the context kept, a repeated message is a back-reference; without, every message
    is compressed afresh (the same bytes each time)."""
    text = b'[1,["t",[3,560000,100,1,20]]]' * 4
    kept = connection.MessageDeflater(connection.DeflateVariant(12, 4, 6, context_takeover=True))
    fresh = connection.MessageDeflater(connection.DeflateVariant(12, 4, 6, context_takeover=False))
    first = kept.compress(text)
    assert len(kept.compress(text)) < len(first) // 2
    assert fresh.compress(text) == fresh.compress(text) == first


VARIANTS = [
    connection.DeflateVariant(9, 4, 6, context_takeover=True),
    connection.DeflateVariant(12, 4, 6, context_takeover=True),
    connection.DeflateVariant(12, 4, 6, context_takeover=False),
    None,
]

payload_texts = st.builds(
    lambda market, price, parts: orjson.dumps([market, ["t", [market, price, 100, 1, 20]], *parts]),
    st.integers(0, 40),
    st.integers(1, 9999),
    st.lists(st.sampled_from([["k", 1, 2, 3], ["w", 3, 1, 2, 3, 4, 5], ["e", "x" * 300]]), max_size=3),
)
shared_operation = st.one_of(
    st.tuples(st.just("publish"), payload_texts),
    st.tuples(st.just("publish"), payload_texts),
    st.tuples(st.just("publish"), payload_texts),
    st.tuples(st.just("join"), st.integers(0, 5)),
    st.tuples(st.just("leave"), st.integers(0, 5)),
    st.tuples(st.just("alone"), st.integers(0, 5), payload_texts),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(shared_operation, max_size=120), st.lists(st.sampled_from(VARIANTS), min_size=6, max_size=6))
@example(  # without context takeover, a member that leaves must not keep a context either
    [("join", 0), ("publish", b"[1]"), ("leave", 0), ("alone", 0, b'[2,"abc"]'), ("alone", 0, b'[3,"abc"]')],
    [VARIANTS[2]] * 6,
)
def test_members_of_a_group_inflate_exactly_their_payloads_from_shared_bytes(
    ops: list[tuple[Any, ...]], variants: list[connection.DeflateVariant | None]
) -> None:
    """Property: six connections (deflate variants and plain) join and leave one group at random
    points and get frames of their own in between; each client inflates exactly the payloads it
    was sent, in order, whether the bytes came from its own compressor or the group's shared one
    (after 2**window_bits bytes in the group, or from the stream's start), or from a compressor
    of its own primed with the group's history after it left."""
    encoders = [
        connection.FrameEncoder(None if variant is None else connection.MessageDeflater(variant))
        for variant in variants
    ]
    decoders = [
        _client_decoder(
            None
            if variant is None
            else f"permessage-deflate; server_max_window_bits={variant.window_bits}"
            + ("" if variant.context_takeover else "; server_no_context_takeover")
        )
        for variant in variants
    ]
    sent: list[list[bytes]] = [[] for _ in encoders]
    wire: list[list[bytes]] = [[] for _ in encoders]
    frames = connection.GroupFrames()
    members: set[int] = set()
    for op in ops:
        if op[0] == "publish":
            frames.next(op[1])
            for index in sorted(members):
                wire[index].append(encoders[index].group_frame(frames))
                sent[index].append(op[1])
        elif op[0] == "join":
            members.add(op[1])
        elif op[0] == "leave" and op[1] in members:
            members.discard(op[1])
            encoders[op[1]].left_group()
        elif op[0] == "alone" and op[1] not in members:
            wire[op[1]].append(encoders[op[1]].frame(op[2]))
            sent[op[1]].append(op[2])
    for index, decoder in enumerate(decoders):
        decoder.receive_bytes(b"".join(wire[index]))
        assert [f.payload for f in decoder.received_frames()] == [p.decode() for p in sent[index]]


def test_a_later_member_shares_compressed_bytes_at_once_and_the_founders_after_a_window() -> None:
    """The founder shares the group's compressor from the first frame. A member that joins later
    takes a stream of its own that begins with its first group frame, so it holds no compressor
    of its own from then on either; once that stream has carried a window's worth (4 KiB for
    12 bits) of payloads, its bytes are the founder's (one compression per payload again), and
    both clients inflate exactly what they were sent."""
    variant = connection.DeflateVariant(12, 4, 6, context_takeover=True)
    founder = connection.FrameEncoder(connection.MessageDeflater(variant))
    later = connection.FrameEncoder(connection.MessageDeflater(variant))
    decoders = [_client_decoder("permessage-deflate; server_max_window_bits=12") for _ in range(2)]
    frames = connection.GroupFrames()
    payload = b'[7,["t",[3,560000,100,1,20]]]'
    frames.next(payload)
    decoders[0].receive_bytes(founder.group_frame(frames))
    assert founder.shares_compressor
    decoders[1].receive_bytes(later.frame(b"[1]"))
    frames.next(payload)
    founder_bytes = founder.group_frame(frames)
    later_bytes = later.group_frame(frames)
    assert later.shares_compressor and later_bytes is not founder_bytes
    received = len(payload)
    sent = [[payload, payload], [b"[1]", payload]]
    while received < 4096 + 2 * len(payload):  # the later stream began one payload after
        decoders[0].receive_bytes(founder_bytes)
        decoders[1].receive_bytes(later_bytes)
        frames.next(payload)
        founder_bytes = founder.group_frame(frames)
        later_bytes = later.group_frame(frames)
        sent[0].append(payload)
        sent[1].append(payload)
        received += len(payload)
    decoders[0].receive_bytes(founder_bytes)
    decoders[1].receive_bytes(later_bytes)
    assert later_bytes is founder_bytes
    for decoder, payloads in zip(decoders, sent, strict=True):
        assert [f.payload for f in decoder.received_frames()] == [p.decode() for p in payloads]


def test_a_stream_nobody_receives_is_dropped() -> None:
    """A later member's stream goes when its last member leaves (no compression for nobody)."""
    variant = connection.DeflateVariant(12, 4, 6, context_takeover=True)
    founder = connection.FrameEncoder(connection.MessageDeflater(variant))
    later = connection.FrameEncoder(connection.MessageDeflater(variant))
    frames = connection.GroupFrames()
    frames.next(b"[1]")
    founder.group_frame(frames)
    frames.next(b"[2]")
    later.group_frame(frames)
    assert len(frames._streams[variant]) == 2
    later.left_group()
    frames.next(b"[3]")
    assert len(frames._streams[variant]) == 1


# -- hypercorn's internals ------------------------------------------------------------------------


def test_hypercorn_and_wsproto_are_the_versions_whose_internals_we_use() -> None:
    """attach walks hypercorn 0.18.0's WSStream -> H11Protocol -> TCPServer and reads wsproto
    1.3.2's negotiated extensions: re-check flowboard/server/connection.py on an upgrade."""
    assert version("hypercorn") == "0.18.0"
    assert version("wsproto") == "1.3.2"


async def test_a_scope_without_hypercorns_send_gets_no_connection() -> None:
    """Another server (or quart's test client) leaves the connection on quart's path."""

    async def foreign_send(message: Any) -> None:
        pass

    assert await connection.attach({}, stall_timeout=1) is None
    assert await connection.attach({connection.SCOPE_KEY: foreign_send}, stall_timeout=1) is None


@pytest.fixture
def attached(monkeypatch: pytest.MonkeyPatch) -> list[connection.Connection | None]:
    """Every connection ``attach`` hands out (None where it found no hypercorn connection)."""
    made: list[connection.Connection | None] = []
    real = connection.attach

    async def recording(scope: Any, *, stall_timeout: float) -> connection.Connection | None:
        made.append(await real(scope, stall_timeout=stall_timeout))
        return made[-1]

    monkeypatch.setattr(connection, "attach", recording)
    return made


@pytest.mark.parametrize("deflate", [True, False])
async def test_every_connection_through_hypercorn_is_taken_over(
    server: Runtime,
    attached: list[connection.Connection | None],
    deflate: bool,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Through the real hypercorn every /ws connection gets our writer, with the negotiated
    deflate parameters (12 window bits by default) or none, and its frames decode."""
    client = await open_wire_client(ws_url(server), deflate=deflate)
    assert client.deflate_negotiated == deflate
    view = ViewState()
    frames = 0
    with trio.move_on_after(5):
        while True:
            view.apply_frame((await client.receive()).text)
            frames += 1
    assert frames > 20 and view.seq > 0
    assert len(attached) == 1
    wire = attached[0]
    assert wire is not None, "hypercorn's internals changed: see flowboard/server/connection.py"
    if deflate:
        assert wire.encoder.variant is not None and wire.encoder.variant.window_bits == 12
    else:
        assert wire.encoder.variant is None
    await client.aclose()


# -- the one writer -------------------------------------------------------------------------------


@pytest.fixture
def trickling_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``os.write`` takes at most 7 bytes, as a socket with a nearly full buffer would."""
    real_write = os.write

    def trickle(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data)[:7])

    monkeypatch.setattr(os, "write", trickle)


async def _watch_while_pinging(runtime: Runtime, seconds: float) -> ViewState:
    """One client that pings every 1 ms (so pongs are due while data frames are half written)
    and folds every frame it gets for ``seconds``; then reads up to the hub's latest seq."""
    client = await open_wire_client(ws_url(runtime), deflate=True)
    view = ViewState()

    async def ping_often() -> None:
        for n in range(100_000):
            await client._stream.send_all(client._ws.send(Ping(payload=b"p%d" % n)))
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ping_often)
        with trio.move_on_after(seconds):
            while True:
                view.apply_frame((await client.receive()).text)
        nursery.cancel_scope.cancel()
    while view.seq < runtime.hub.seq:
        view.apply_frame((await client.receive()).text)
    await client.aclose()
    return view


async def test_frames_stay_whole_when_the_socket_takes_a_few_bytes_while_the_client_pings(
    server: Runtime, trickling_writes: None, autojump_clock: trio.testing.MockClock
) -> None:
    """Sockets that take 7 bytes a write while their clients ping every 1 ms and the server
    sends: every frame parses (a pong never lands inside a data frame), and each client's view
    equals the server's. (Before one writer owned the socket, this failed within seconds.)"""
    views: list[ViewState] = []

    async def watch() -> None:
        views.append(await _watch_while_pinging(server, 4))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(watch)
    for view in views:
        assert view.seq > 100
        actual = view.summary()
        actual.pop("seq")
        assert actual == expected_summary(
            server.agg, channels=v2.DEFAULT_CHANNELS, detail=None, tape_len=len(view.tape), detail_len=50
        )


async def test_a_hopeless_client_is_closed_with_4008_and_its_reason_after_its_frames(
    server: Runtime, trickling_writes: None, autojump_clock: trio.testing.MockClock
) -> None:
    """The close frame goes after the data frames, whole, even when every write is partial."""
    client = await open_wire_client(ws_url(server), deflate=True)
    view = ViewState()
    with trio.move_on_after(3):
        while True:
            view.apply_frame((await client.receive()).text)
    connected = next(iter(server.hub.clients))
    connected.session.close_reason = "too slow: test"
    connected.wake()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            view.apply_frame((await client.receive()).text)
    await client.aclose()
    assert closed.value.code == v2.CLOSE_TOO_SLOW
    assert closed.value.reason == "too slow: test"


async def test_caught_up_clients_share_one_groups_frames_and_a_command_takes_one_out(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """Three caught-up clients with the same channels end up in one group (the publisher builds
    each frame once and writes it to each); one that sends a command goes on alone and gets
    what it asked for; every view equals the server's."""
    clients = [await open_wire_client(ws_url(server), deflate=True) for _ in range(3)]
    views = [ViewState() for _ in clients]

    async def read_for(seconds: float) -> None:
        async def read(index: int) -> None:
            with trio.move_on_after(seconds):
                while True:
                    views[index].apply_frame((await clients[index].receive()).text)

        async with trio.open_nursery() as nursery:
            for index in range(len(clients)):
                nursery.start_soon(read, index)

    await read_for(5)
    stats = server.hub.statistics()
    assert (stats.groups, stats.grouped_clients) == (1, 3)
    grouped_frames = server.metrics.frames_sent.labels("v2", "trades")._value.get()
    await clients[0].send_text('{"op":"unsub","ch":["top"]}')
    await read_for(5)
    stats = server.hub.statistics()
    assert stats.grouped_clients == 3 and stats.groups == 2, "the one that unsubscribed regroups alone"
    assert server.metrics.frames_sent.labels("v2", "trades")._value.get() > grouped_frames
    for index, view in enumerate(views):
        while view.seq < server.hub.seq:
            view.apply_frame((await clients[index].receive()).text)
        actual = view.summary()
        actual.pop("seq")
        channels = v2.DEFAULT_CHANNELS - {"top"} if index == 0 else v2.DEFAULT_CHANNELS
        assert actual == expected_summary(
            server.agg, channels=channels, detail=None, tape_len=len(view.tape), detail_len=50
        )
    for client in clients:
        await client.aclose()

"""One writer per WebSocket connection: after the handshake, every byte to the socket is ours.

Hypercorn serves HTTP and the WebSocket handshake. Once a ``/ws`` connection is accepted,
:func:`attach` interposes on that connection's ``H11Protocol.send`` (the bound
``TCPServer.protocol_send`` through which hypercorn writes everything: pongs, close frames,
close replies), so that hypercorn's bytes are appended to the same ordered output buffer as
our data frames. A frame the socket takes only in part is therefore always finished before
any other byte: nothing can land inside it (before, a pong written by hypercorn while the
rest of a frame waited made the client fail with 1007).

Our data frames do not go through quart, hypercorn or wsproto at all: :func:`text_frame`
builds an RFC 6455 server frame (FIN, RSV1 when compressed, opcode text, 7/16/64-bit length,
unmasked) around a payload that :class:`MessageDeflater` compressed with the parameters the
handshake negotiated (read from the connection's permessage-deflate extension object). The
fast path is one non-blocking ``write()``; what the socket does not take waits in the buffer,
drained by :meth:`Connection.flush` with ``trio.lowlevel.wait_writable``. A buffer that does not
drain within the stall timeout aborts the connection (no close frame could get past it).

Hypercorn's internals that this needs stay in this module: ``WSStream.app_send`` bound in the
ASGI scope (:func:`capture`), ``WSStream.send`` bound to ``H11Protocol.stream_send``,
``H11Protocol.send`` bound to ``TCPServer.protocol_send``, ``TCPServer.send_lock`` and
``TCPServer.stream``, and wsproto's ``Connection._proto.extensions``. hypercorn (0.18.0) and
wsproto (1.3.2) are pinned, and ``tests/test_connection.py`` fails when any link changes; at
run time a link that does not match (another server, TLS, HTTP/2, quart's test client) makes
:func:`attach` return None, and the caller keeps quart's path.
"""

from __future__ import annotations

import contextlib
import os
import socket as stdlib_socket
import struct
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import attrs
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState
from wsproto.extensions import PerMessageDeflate

from flowboard.server.deflate import BoundedDeflate

#: The scope key under which :func:`capture` leaves hypercorn's ASGI ``send``.
SCOPE_KEY = "flowboard.asgi_send"

ASGIApp = TypeVar("ASGIApp", bound=Callable[..., Awaitable[None]])

_FIN_TEXT = 0x81  # FIN + opcode 1 (text)
_RSV1 = 0x40  # "this message is compressed" (permessage-deflate)
_SYNC_FLUSH_TAIL = b"\x00\x00\xff\xff"


def capture(app: ASGIApp) -> ASGIApp:
    """Wrap ``app`` (quart's ``asgi_app``) so WebSocket scopes remember the server's ``send``."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = send
        await app(scope, receive, send)

    return cast(ASGIApp, asgi)


def frame_header(payload_length: int, *, compressed: bool) -> bytes:
    """The header of an unmasked, final server text frame of ``payload_length`` bytes."""
    first = _FIN_TEXT | (_RSV1 if compressed else 0)
    if payload_length < 126:
        return bytes((first, payload_length))
    if payload_length < 1 << 16:
        return struct.pack("!BBH", first, 126, payload_length)
    return struct.pack("!BBQ", first, 127, payload_length)


def text_frame(payload: bytes, *, compressed: bool) -> bytes:
    """A whole server text frame around ``payload`` (UTF-8 text, or its deflated form)."""
    return frame_header(len(payload), compressed=compressed) + payload


@attrs.frozen
class DeflateVariant:
    """What decides a connection's compressed bytes: clients of the same variant that hold the
    same inflater window can be sent the same bytes."""

    window_bits: int
    mem_level: int
    level: int
    context_takeover: bool

    def compressor(self, zdict: bytes = b"") -> zlib._Compress:
        if zdict:
            return zlib.compressobj(
                self.level, zlib.DEFLATED, -self.window_bits, self.mem_level, zlib.Z_DEFAULT_STRATEGY, zdict
            )
        return zlib.compressobj(self.level, zlib.DEFLATED, -self.window_bits, self.mem_level)


def _deflate_message(compressor: zlib._Compress, payload: bytes) -> bytes:
    """One message's compressed payload (RFC 7692: sync flush, tail 00 00 ff ff removed)."""
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if data.endswith(_SYNC_FLUSH_TAIL):
        return data[:-4]
    return data


class MessageDeflater:
    """permessage-deflate of one connection's outgoing messages."""

    def __init__(self, variant: DeflateVariant, *, zdict: bytes = b"") -> None:
        if zdict and not variant.context_takeover:
            raise ValueError("a dictionary needs context takeover: the client forgets each message")
        self.variant = variant
        # Created at the first message: an idle connection holds no zlib state. With a
        # dictionary (what the client's inflater already holds) at once.
        self._compressor: zlib._Compress | None = variant.compressor(zdict) if zdict else None

    def compress(self, payload: bytes) -> bytes:
        compressor = self._compressor
        if compressor is None:
            compressor = self.variant.compressor()
            if self.variant.context_takeover:
                self._compressor = compressor
        return _deflate_message(compressor, payload)


class SharedDeflateStream:
    """One compressor for every member of a group that negotiated ``variant``.

    Between messages a client's inflater holds only its window: the last 2**window_bits bytes
    it inflated (each message ends on a sync flush). A member whose last 2**window_bits bytes
    received are this stream's payloads (or that received every payload since the stream
    began) can therefore be sent this stream's bytes: every back-reference they hold resolves
    to the same bytes in its window."""

    def __init__(self, variant: DeflateVariant) -> None:
        self.variant = variant
        self.window = 1 << variant.window_bits
        self._compressor = variant.compressor()
        # The last ``window`` payload bytes (a member that leaves starts its own compressor
        # with them as the dictionary).
        self.history = bytearray()
        # Payload bytes compressed before the current payload, and with it.
        self.before = 0
        self.total = 0
        # The current payload's frame.
        self.frame = b""

    def advance(self, payload: bytes) -> None:
        if self.variant.context_takeover:
            data = _deflate_message(self._compressor, payload)
        else:
            data = _deflate_message(self.variant.compressor(), payload)
        self.frame = text_frame(data, compressed=True)
        self.before = self.total
        self.total += len(payload)
        history = self.history
        history += payload
        if len(history) > self.window:
            del history[: len(history) - self.window]


class GroupFrames:
    """The wire frames of one group's current payload: built once for plain members and once
    per deflate variant, whatever the number of members."""

    def __init__(self) -> None:
        self.payload = b""
        self._plain = b""
        self._streams: dict[DeflateVariant, SharedDeflateStream] = {}

    def next(self, payload: bytes) -> None:
        """The group's next payload (every stream sees every payload, in order)."""
        self.payload = payload
        self._plain = b""
        for stream in self._streams.values():
            stream.advance(payload)

    def plain(self) -> bytes:
        if not self._plain:
            self._plain = text_frame(self.payload, compressed=False)
        return self._plain

    def stream(self, variant: DeflateVariant) -> SharedDeflateStream:
        stream = self._streams.get(variant)
        if stream is None:
            # Begins with the current payload: every member asking now has received all of it.
            stream = self._streams[variant] = SharedDeflateStream(variant)
            stream.advance(self.payload)
        return stream


class FrameEncoder:
    """How one connection turns payloads into wire frames: its own (plain, or compressed with
    its own context), or a group's, shared with the other members once its window allows."""

    def __init__(self, deflater: MessageDeflater | None) -> None:
        self.variant = None if deflater is None else deflater.variant
        # Its own compressor: None when plain, and while it is on a group's shared stream.
        self.deflater = deflater
        # The group stream whose payloads it receives, and that stream's byte count when it
        # began to receive them.
        self._stream: SharedDeflateStream | None = None
        self._mark = 0

    @property
    def shares_compressor(self) -> bool:
        return self._stream is not None and self.deflater is None and self.variant is not None

    def frame(self, payload: bytes) -> bytes:
        """A frame of this connection's own."""
        self.left_group()
        if self.deflater is None:
            return text_frame(payload, compressed=False)
        return text_frame(self.deflater.compress(payload), compressed=True)

    def group_frame(self, frames: GroupFrames) -> bytes:
        """The frame of a group's current payload, for this member."""
        variant = self.variant
        if variant is None:
            return frames.plain()
        stream = frames.stream(variant)
        if self._stream is not stream:
            self.left_group()
            self._stream = stream
            self._mark = stream.before
        if self.deflater is not None and (
            not variant.context_takeover or self._mark == 0 or stream.before - self._mark >= stream.window
        ):
            self.deflater = None  # its window now ends with the stream's payloads
        if self.deflater is None:
            return stream.frame
        return text_frame(self.deflater.compress(frames.payload), compressed=True)

    def left_group(self) -> None:
        """Back on its own: a compressor of its own again, primed with what its client's
        inflater holds (the stream's last payload bytes)."""
        stream = self._stream
        if stream is None:
            return
        self._stream = None
        variant = self.variant
        if self.deflater is None and variant is not None:
            # Without context takeover the client's inflater forgets each message: no dictionary.
            history = bytes(stream.history) if variant.context_takeover else b""
            self.deflater = MessageDeflater(variant, zdict=history)


def deflater_for(extension: PerMessageDeflate) -> MessageDeflater:
    """Our compressor for what ``extension`` (hypercorn's server side) negotiated."""
    if isinstance(extension, BoundedDeflate):
        mem_level, level = extension.settings.mem_level, extension.settings.level
    else:
        mem_level, level = 8, zlib.Z_DEFAULT_COMPRESSION
    return MessageDeflater(
        DeflateVariant(
            window_bits=extension.server_max_window_bits,
            mem_level=mem_level,
            level=level,
            context_takeover=not extension.server_no_context_takeover,
        )
    )


class Connection:
    """The only writer of one accepted WebSocket connection's socket."""

    def __init__(
        self,
        stream: WSStream,
        protocol: H11Protocol,
        tcp: TCPServer,
        sock: trio.socket.SocketType,
        deflater: MessageDeflater | None,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._tcp = tcp
        self._socket = sock
        # How hypercorn wrote before we took over: still used for its Closed event.
        self._hypercorn_send = protocol.send
        # Turns payloads into frames (compressed when the client negotiated permessage-deflate).
        self.encoder = FrameEncoder(deflater)
        # Bytes accepted for this socket but not yet taken by the kernel, in order.
        self._out = bytearray()
        # Held by whoever waits for the socket to drain the buffer (one waiter per socket).
        self._draining = trio.Lock()
        # Set once the socket failed or we aborted it: nothing more is written.
        self.broken = False
        # How long a queued byte may wait for the socket before the connection is aborted.
        self._stall_timeout = 10.0

    # -- the write side ----------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Bytes waiting for the socket."""
        return len(self._out)

    def can_send(self) -> bool:
        """Whether data frames may still be sent (no close frame sent or received yet)."""
        stream = self._stream
        return (
            not self.broken and not stream.closed and stream.connection.state is ConnectionState.OPEN
        )

    def send_text_nowait(self, payload: bytes) -> bool:
        """Queue ``payload`` (UTF-8 JSON) as one text frame, writing what the socket takes now.

        True when the whole frame went out; False when some of it waits in the buffer (call
        :meth:`flush`)."""
        return self.write_nowait(self.encoder.frame(payload))

    def send_group_frame_nowait(self, frames: GroupFrames) -> bool:
        """Like :meth:`send_text_nowait`, for a group's current payload (shared bytes); False
        without writing when the connection can no longer be sent data."""
        stream = self._stream
        if self.broken or stream.closed or stream.connection.state is not ConnectionState.OPEN:
            return False
        return self.write_nowait(self.encoder.group_frame(frames))

    def write_nowait(self, data: bytes) -> bool:
        """Append ``data`` after everything queued before it; True when nothing waits."""
        if self.broken:
            return True
        if self._out:
            self._out += data
            return False
        sent = self._write(data)
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            return False
        return True

    def _write(self, data: bytes | bytearray | memoryview) -> int:
        # Asked each time: once hypercorn closed the socket its number may belong to another.
        fd = self._socket.fileno()
        if fd < 0:
            self._fail()
            return len(data)
        try:
            return os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            # Reset or closed by the peer: hypercorn's reader sees it too and ends the stream.
            self._fail()
            return len(data)

    def _fail(self) -> None:
        self.broken = True
        self._out = bytearray()

    async def flush(self) -> bool:
        """Wait until every queued byte is written; False (and the connection aborted) when the
        socket did not take them within the stall timeout."""
        with trio.move_on_after(self._stall_timeout):
            async with self._draining:
                while self._out and not self.broken:
                    try:
                        await trio.lowlevel.wait_writable(self._socket)
                    except trio.ClosedResourceError:  # hypercorn closed it meanwhile
                        self._fail()
                        break
                    sent = self._write(self._out)
                    del self._out[:sent]
            return True
        self.abort()
        return False

    def abort(self) -> None:
        """Drop the connection without a close frame (there is no way past a stuck buffer):
        hypercorn's reader then sees the end of the stream and closes the WebSocket."""
        if self.broken:
            return
        self._fail()
        with contextlib.suppress(OSError):  # already gone
            self._socket.shutdown(stdlib_socket.SHUT_RDWR)

    # -- hypercorn's side ----------------------------------------------------------------------

    async def _send_for_hypercorn(self, event: Event) -> None:
        """Stands in for ``TCPServer.protocol_send`` on this connection."""
        if isinstance(event, RawData):
            if not self.write_nowait(event.data):
                await self.flush()
        elif isinstance(event, Closed):
            # Our bytes first (bounded), then hypercorn closes the socket.
            with trio.CancelScope(shield=True):
                if self._out:
                    await self.flush()
                await self._hypercorn_send(event)
        else:
            await self._hypercorn_send(event)

    async def take_over(self, stall_timeout: float) -> None:
        """From now on every byte hypercorn writes to this connection goes through us."""
        self._stall_timeout = stall_timeout
        # A write of hypercorn's in progress (a pong) is finished before we interpose.
        async with self._tcp.send_lock:
            self._protocol.send = self._send_for_hypercorn


def _negotiated_deflate(stream: WSStream) -> PerMessageDeflate | None:
    proto = getattr(stream.connection, "_proto", None)
    for extension in getattr(proto, "extensions", ()):
        if isinstance(extension, PerMessageDeflate) and extension.enabled():
            return extension
    return None


async def attach(scope: Mapping[str, object], *, stall_timeout: float) -> Connection | None:
    """Take over the accepted WebSocket connection behind ``scope``; None if it is not a
    plain-TCP hypercorn HTTP/1.1 connection (the caller then keeps quart's path)."""
    send = scope.get(SCOPE_KEY)
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream) or getattr(send, "__func__", None) is not WSStream.app_send:
        return None
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol) or protocol.stream is not stream:
        return None
    tcp = getattr(protocol.send, "__self__", None)
    if not isinstance(tcp, TCPServer) or not isinstance(tcp.stream, trio.SocketStream):
        return None
    if getattr(protocol.send, "__func__", None) is not TCPServer.protocol_send:
        return None
    extension = _negotiated_deflate(stream)
    connection = Connection(
        stream, protocol, tcp, tcp.stream.socket, None if extension is None else deflater_for(extension)
    )
    await connection.take_over(stall_timeout)
    return connection

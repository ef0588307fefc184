"""Direct writes of v2 data frames: our second extension point into hypercorn (after deflate.py).

Through quart, every frame is an ASGI message, a quart signal, a wsproto event, an H11 event
dispatch, hypercorn's send lock, a shielded cancel scope and trio's ``send_all``, which yields to
the scheduler twice: together most of the ~120 us of CPU a delivered frame cost. In the common
case (a caught-up client, room in the socket's send buffer, hypercorn not writing) a
:class:`DirectWriter` instead encodes the frame with the connection's own wsproto ``Connection``
(so :class:`~flowboard.server.deflate.BoundedDeflate` compresses it, with its context) and hands
the bytes to the kernel in one non-blocking ``write()``, without yielding. Everything else goes
the way quart would have sent it: bytes the socket did not take go through hypercorn's
``TCPServer.protocol_send`` (under its ``send_lock``, so frames never interleave), and a
connection that is closing is left to quart entirely.

Finding the connection: :func:`capture` is ASGI middleware that stores hypercorn's ASGI ``send``
(a bound ``WSStream.app_send``) in the scope; :func:`writer_for` walks from that ``WSStream`` to
its ``H11Protocol`` and ``TCPServer`` through their bound ``send`` callables. hypercorn is pinned
(0.18.0) and ``tests/test_direct.py`` fails when any link changes; at run time a link that does
not match (another server, TLS, HTTP/2, quart's test client) returns None and the caller keeps
quart's path.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import trio
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage

#: The scope key under which :func:`capture` leaves hypercorn's ASGI ``send``.
SCOPE_KEY = "flowboard.asgi_send"

ASGIApp = TypeVar("ASGIApp", bound=Callable[..., Awaitable[None]])


def capture(app: ASGIApp) -> ASGIApp:
    """Wrap ``app`` (quart's ``asgi_app``) so WebSocket scopes remember the server's ``send``."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = send
        await app(scope, receive, send)

    return cast(ASGIApp, asgi)


class DirectWriter:
    """Writes text frames of one hypercorn WebSocket connection without quart's send path."""

    def __init__(self, stream: WSStream, tcp: TCPServer, socket: trio.socket.SocketType) -> None:
        self._stream = stream
        self._tcp = tcp
        self._socket = socket
        # Frames written whole by the fast path / finished by hypercorn (tests and metrics).
        self.direct = 0
        self.handed_over = 0

    def can_write(self) -> bool:
        """Whether the connection is open for our frames (else quart's path handles the close)."""
        stream = self._stream
        return not stream.closed and stream.connection.state is ConnectionState.OPEN

    async def send(self, text: str) -> None:
        """Send ``text`` as one text frame; the caller checked :meth:`can_write`.

        The fast path does not checkpoint: the send loop that calls this waits (and so yields)
        between frames.
        """
        rest = self.write_nowait(text)
        if rest:
            await self.finish(rest)

    def write_nowait(self, text: str) -> bytes:
        """Encode ``text`` as one text frame and write what the socket takes now; returns the
        rest, which must go out (:meth:`finish`) before any other frame of ours."""
        data = self._stream.connection.send(TextMessage(data=text))
        sent = 0
        if not self._tcp.send_lock.locked():
            fd = self._socket.fileno()
            if fd >= 0:
                try:
                    sent = os.write(fd, data)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass  # reset or closed by the peer: hypercorn's own write will find out
        if sent == len(data):
            self.direct += 1
            return b""
        return data[sent:]

    async def finish(self, rest: bytes) -> None:
        """Write the rest of a frame through hypercorn, shielded, as quart's send would have."""
        self.handed_over += 1
        with trio.CancelScope(shield=True):
            await self._tcp.protocol_send(RawData(data=rest))


def writer_for(scope: Mapping[str, object]) -> DirectWriter | None:
    """The writer of the WebSocket connection behind ``scope``, or None if it has none."""
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
    return DirectWriter(stream, tcp, tcp.stream.socket)

"""A small WebSocket client that counts wire bytes, for tests and the benchmark.

trio-websocket's client never offers permessage-deflate and no client reports what
crossed the wire, so this one is wsproto over a trio TCP stream: it offers deflate like a
browser when asked to, answers pings, and attributes every byte it reads (frame headers
included) to the message it completes.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

_READ_SIZE = 65_536


class ConnectionClosed(Exception):
    """The server closed the connection; ``code`` and ``reason`` say why."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


@attrs.frozen
class Message:
    text: str
    wire_bytes: int  # bytes read from the socket while this message completed
    received_at: float  # trio time when it completed


class WireClient:
    """One client connection. Use :func:`open_wire_client`."""

    def __init__(self, stream: trio.SocketStream, connection: WSConnection) -> None:
        self._stream = stream
        self._ws = connection
        self._messages: deque[Message] = deque()
        self._parts: list[str] = []
        self._unattributed = 0
        self.wire_bytes_in = 0
        self.deflate_negotiated = False
        self.closed: ConnectionClosed | None = None

    async def _handshake(
        self, host: str, target: str, deflate: bool, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        extensions = [PerMessageDeflate()] if deflate else []
        extra = [(name.encode(), value.encode()) for name, value in headers]
        request = Request(host=host, target=target, extensions=extensions, extra_headers=extra)
        await self._stream.send_all(self._ws.send(request))
        while True:
            events = await self._read_events()
            for index, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    self.deflate_negotiated = any(
                        isinstance(ext, PerMessageDeflate) and ext.enabled() for ext in event.extensions
                    )
                    # The server's first frame may come in the same read as its handshake answer.
                    for later in events[index + 1 :]:
                        await self._handle(later)
                    return
                if isinstance(event, RejectConnection):
                    raise ConnectionClosed(event.status_code, "handshake rejected")

    async def _read_events(self) -> list[Event]:
        try:
            data = await self._stream.receive_some(_READ_SIZE)
        except trio.BrokenResourceError:
            data = b""
        self.wire_bytes_in += len(data)
        self._unattributed += len(data)
        self._ws.receive_data(data or None)
        return list(self._ws.events())

    async def receive(self) -> Message:
        """The next complete message; ConnectionClosed when the server closed."""
        while not self._messages:
            if self.closed is not None:
                raise self.closed
            for event in await self._read_events():
                await self._handle(event)
        return self._messages.popleft()

    async def _handle(self, event: Event) -> None:
        if isinstance(event, TextMessage):
            self._parts.append(event.data)
            if event.message_finished:
                text = "".join(self._parts)
                self._parts = []
                self._messages.append(Message(text, self._unattributed, trio.current_time()))
                self._unattributed = 0
        elif isinstance(event, BytesMessage):
            raise ConnectionClosed(None, "unexpected binary message")
        elif isinstance(event, Ping):
            await self._stream.send_all(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.closed = ConnectionClosed(event.code, event.reason)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._stream.send_all(self._ws.send(event.response()))
        if self._ws.state.name == "CLOSED" and self.closed is None:
            self.closed = ConnectionClosed(None, "connection lost")

    async def send_text(self, text: str) -> None:
        await self._stream.send_all(self._ws.send(TextMessage(data=text)))

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` to the socket as it is: frames a test built by hand (e.g. a deflate bomb)."""
        await self._stream.send_all(data)

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self._stream.aclose()


async def open_wire_client(
    url: str,
    *,
    deflate: bool = True,
    headers: Sequence[tuple[str, str]] = (),
    local_address: str | None = None,
) -> WireClient:
    """Connect to ``ws://host:port/path?query``; offers permessage-deflate unless told not to.
    ``headers`` go into the handshake (e.g. Origin); ``local_address`` is the address to connect
    from (e.g. 127.0.0.2, to look like another client on loopback)."""
    if not url.startswith("ws://"):
        raise ValueError(f"expected a ws:// URL, got {url!r}")
    authority, _, path = url[len("ws://") :].partition("/")
    host, _, port = authority.rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port), local_address=local_address)
    client = WireClient(stream, WSConnection(ConnectionType.CLIENT))
    try:
        await client._handshake(authority, "/" + path, deflate, headers)
    except BaseException:
        await stream.aclose()
        raise
    return client

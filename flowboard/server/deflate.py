"""permessage-deflate with bounded memory, both ways: our first extension point into hypercorn.

Hypercorn accepts permessage-deflate whenever a browser offers it, with a 15-bit window and
zlib's default memLevel 8: about 256 KiB of compressor state per connection, which caps a
process at a few thousand clients. It has no setting for this, so ``install()`` replaces the
extension class hypercorn's WebSocket handshake instantiates (``hypercorn.protocol.ws_stream.
PerMessageDeflate``) with a factory for :class:`BoundedDeflate`, configured once at start-up.

zlib's deflate state costs ``2**(window_bits + 2) + 2**(mem_level + 9)`` bytes, so the
defaults (12, 4) keep it at 24 KiB: against (13, 5) the 4 KiB window grew the stream from 270
to 280 B/s and the snapshot from 3.53 to 3.58 KB. Context takeover stays on, which is what makes
small, similar frames compress well. A smaller server window is always safe for the peer (its
inflater accepts any window up to its own), and we also announce it in the response.

Inbound, wsproto's class inflates a whole frame before hypercorn checks the message size: a
61 KB frame inflated to 60 MiB. :class:`BoundedDeflate` inflates with a limit and refuses a
message (close 1009) as soon as its inflated size, across all its frames, passes
``max_inflated_bytes`` (the 64 KiB command limit): it never holds more than that plus one byte.
For that refusal to reach the client as a close frame, ``install()`` also replaces the wsproto
``Connection`` class hypercorn's handshake instantiates (see :class:`FailClosingConnection`).

An offer is parsed strictly (RFC 7692, section 7.1): a malformed one (``server_max_window_bits=abc``,
out of range, unknown or repeated parameters) is declined, and the WebSocket is served without
compression. A browser-facing server should not refuse the connection: the RFC says to decline
the offer, the page works without deflate, and a 400 would only break a client over a header it
did not need. wsproto's parser raised ``ValueError`` out of the handshake instead, so the client
got no answer at all.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Callable, Generator

import attrs
from hypercorn.protocol import ws_stream
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Event
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from flowboard.config import DeflateSettings
from flowboard.errors import DeflateOfferError
from flowboard.logs import ThrottledLog

log = logging.getLogger(__name__)
#: A client chooses how often it sends a malformed offer; the log does not follow it.
_offer_log = ThrottledLog(log, "client")

#: The names hypercorn's handshake looks up, in its module, each time it accepts a WebSocket.
_HOOK = "PerMessageDeflate"
_CONNECTION_HOOK = "Connection"

#: The end of a sync flush, which permessage-deflate strips from every message (RFC 7692, 7.2.1).
_SYNC_FLUSH_TAIL = b"\x00\x00\xff\xff"
#: A window-bits value as RFC 7692 writes it: 8 to 15, no sign, no leading zero.
_WINDOW_BITS = re.compile(r"8|9|1[0-5]")
_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_WINDOWS = ("server_max_window_bits", "client_max_window_bits")
#: The largest window a client may compress with when the response did not limit it.
_LARGEST_WINDOW_BITS = 15
#: zlib's smallest raw-deflate window; it also inflates what an 8-bit window compressed.
_SMALLEST_ZLIB_WINDOW_BITS = 9


@attrs.frozen
class DeflateOffer:
    """One permessage-deflate offer from a ``Sec-WebSocket-Extensions`` header, parsed."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    # The client's own hint (client_max_window_bits=N), when it gave one.
    client_max_window_bits: int | None = None
    # Whether the offer has client_max_window_bits at all: only then may the response limit it.
    client_window_negotiable: bool = False


def parse_offer(offer: str) -> DeflateOffer:
    """Parse one offer (``permessage-deflate; param[=value]; ...``); DeflateOfferError if malformed."""
    name, *params = (part.strip() for part in offer.split(";"))
    if name != "permessage-deflate":
        raise DeflateOfferError(f"expected a permessage-deflate offer, got {name!r}")
    values: dict[str, int | None] = {}
    for param in params:
        key, has_value, raw = (part.strip() for part in param.partition("="))
        if key not in _FLAGS + _WINDOWS:
            expected = ", ".join(_FLAGS + _WINDOWS)
            raise DeflateOfferError(f"expected parameters among {expected}, got {param!r}")
        if key in values:
            raise DeflateOfferError(f"expected {key} once, got it twice")
        if key in _FLAGS:
            if has_value:
                raise DeflateOfferError(f"expected {key} without a value, got {param!r}")
            values[key] = None
            continue
        # RFC 7692 allows the value as a quoted string too.
        value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
        if has_value and not _WINDOW_BITS.fullmatch(value):
            raise DeflateOfferError(f"{key}: expected window bits from 8 to 15, got {raw!r}")
        if not has_value and key == "server_max_window_bits":
            raise DeflateOfferError("server_max_window_bits: expected window bits from 8 to 15, got no value")
        values[key] = int(value) if has_value else None
    return DeflateOffer(
        server_no_context_takeover="server_no_context_takeover" in values,
        client_no_context_takeover="client_no_context_takeover" in values,
        server_max_window_bits=values.get("server_max_window_bits"),
        client_max_window_bits=values.get("client_max_window_bits"),
        client_window_negotiable="client_max_window_bits" in values,
    )


def _uncounted() -> None:
    pass


@attrs.frozen
class DeflateCounters:
    """What the server counts (metrics): offers declined as malformed, messages refused as too big."""

    declined_offer: Callable[[], None] = _uncounted
    oversized_message: Callable[[], None] = _uncounted


class BoundedDeflate(PerMessageDeflate):
    """PerMessageDeflate whose compressor window and memory, and whose inflation, are bounded."""

    def __init__(self, settings: DeflateSettings, counters: DeflateCounters | None = None) -> None:
        super().__init__(
            server_max_window_bits=settings.window_bits, client_max_window_bits=settings.window_bits
        )
        self.settings = settings
        self.counters = counters or DeflateCounters()
        # The response to the offer we took: wsproto asks again for every offer in the header.
        self._response: str | None = None
        # Inbound state: whether the current frame / message is compressed, and how many bytes
        # the message has inflated to so far (across its frames).
        self._frame_inflates = False
        self._message_compressed = False
        self._message_inflated = 0
        # Why the last message was refused, for the close frame's reason.
        self.refusal: str | None = None

    def accept(self, offer: str) -> bool | str | None:
        if not self.settings.enabled:
            return None
        if self._response is not None:
            # A header may hold several offers; the first one we could take stands.
            return self._response
        try:
            parsed = parse_offer(offer)
        except DeflateOfferError as exc:
            _offer_log.info(
                "declined a permessage-deflate offer (%s): serving this WebSocket uncompressed", exc
            )
            self.counters.declined_offer()
            return None
        ours = self.settings.window_bits
        if parsed.server_max_window_bits is not None and parsed.server_max_window_bits < 9:
            return None  # zlib cannot compress with a 256-byte window; RFC 7692 says decline
        params = []
        if parsed.client_no_context_takeover:
            self.client_no_context_takeover = True
            params.append("client_no_context_takeover")
        if parsed.server_no_context_takeover:
            self.server_no_context_takeover = True
            params.append("server_no_context_takeover")
        if parsed.client_window_negotiable:
            client_bits = min(parsed.client_max_window_bits or ours, ours)
            params.append(f"client_max_window_bits={client_bits}")
        else:
            # The client was not told to use a smaller window: inflate with the largest one.
            client_bits = _LARGEST_WINDOW_BITS
        self.client_max_window_bits = max(client_bits, _SMALLEST_ZLIB_WINDOW_BITS)
        # Never compress with a bigger window than configured, whatever the client allowed.
        self.server_max_window_bits = min(parsed.server_max_window_bits or ours, ours)
        params.append(f"server_max_window_bits={self.server_max_window_bits}")
        self._enabled = True
        self._response = "; ".join(params)
        return self._response

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            # A ping may come between two frames of a message: it leaves the message's state alone.
            self._frame_inflates = False
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(False, False, False)
        if opcode is Opcode.CONTINUATION:
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR  # only a message's first frame says "compressed"
        else:
            self._message_compressed = rsv.rsv1
            self._message_inflated = 0
            if rsv.rsv1 and self._decompressor is None:
                self._decompressor = zlib.decompressobj(-self.client_max_window_bits)
        self._frame_inflates = self._message_compressed
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._frame_inflates:
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not (self._frame_inflates and fin):
            return None
        tail = self._inflate(_SYNC_FLUSH_TAIL)
        if self.client_no_context_takeover:
            self._decompressor = None
        self._message_compressed = False
        return tail

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        """Inflate the next part of a message, at most one byte past what it may still grow by."""
        assert self._decompressor is not None
        room = self.settings.max_inflated_bytes - self._message_inflated
        try:
            # max_length >= 1 (0 would mean "no limit"): room is never negative here.
            inflated = self._decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._message_inflated += len(inflated)
        if self._message_inflated > self.settings.max_inflated_bytes:
            self.counters.oversized_message()
            self.refusal = f"message inflates past {self.settings.max_inflated_bytes} bytes"
            return CloseReason.MESSAGE_TOO_BIG
        return inflated

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        if self._compressor is None and opcode in (Opcode.TEXT, Opcode.BINARY):
            # Created here (the parent would use memLevel 8) so that memory stays bounded.
            self._compressor = zlib.compressobj(
                self.settings.level, zlib.DEFLATED, -self.server_max_window_bits, self.settings.mem_level
            )
        return super().frame_outbound(proto, opcode, rsv, data, fin)


class FailClosingConnection(Connection):
    """wsproto's server Connection, which answers a frame it refuses with a close frame.

    wsproto reports a frame it cannot accept (an extension's CloseReason, bad UTF-8, a protocol
    error) as a CloseConnection event but stays OPEN, and hypercorn then drops the socket without
    a close frame: the client saw 1006, never why. Here the connection is failed as RFC 6455
    (7.1.7) says: the state becomes "remote closing", so hypercorn answers the event with a close
    frame of the same code, as it does when a peer closes.
    """

    def __init__(
        self,
        connection_type: ConnectionType,
        extensions: list[Extension] | None = None,
        trailing_data: bytes = b"",
    ) -> None:
        super().__init__(connection_type, extensions, trailing_data)
        # Where a refusal's reason comes from, when the refusal is ours.
        self._deflate = next((e for e in extensions or () if isinstance(e, BoundedDeflate)), None)

    def events(self) -> Generator[Event, None, None]:
        for event in super().events():
            # Only a refused frame yields a CloseConnection while the state is still OPEN.
            if isinstance(event, CloseConnection) and self.state is ConnectionState.OPEN:
                self._state = ConnectionState.REMOTE_CLOSING
                if self._deflate is not None and self._deflate.refusal is not None:
                    event = CloseConnection(code=event.code, reason=self._deflate.refusal)
            yield event


def install(settings: DeflateSettings, counters: DeflateCounters | None = None) -> None:
    """Make every WebSocket handshake hypercorn accepts from now on use ``settings``."""
    factory: Callable[[], PerMessageDeflate] = lambda: BoundedDeflate(settings, counters)  # noqa: E731
    vars(ws_stream)[_HOOK] = factory
    vars(ws_stream)[_CONNECTION_HOOK] = FailClosingConnection


def uninstall() -> None:
    """Restore hypercorn's own permessage-deflate and connection (the classes it imports from wsproto)."""
    vars(ws_stream)[_HOOK] = PerMessageDeflate
    vars(ws_stream)[_CONNECTION_HOOK] = Connection

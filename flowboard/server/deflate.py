"""permessage-deflate with bounded memory: our one extension point into hypercorn.

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
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import attrs
from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameDecoder, FrameProtocol, Opcode, RsvBits

#: The name hypercorn's handshake looks up, in its module, each time it accepts a WebSocket.
_HOOK = "PerMessageDeflate"


@attrs.frozen
class DeflateSettings:
    enabled: bool = True
    window_bits: int = attrs.field(default=12, validator=attrs.validators.in_(range(9, 16)))
    mem_level: int = attrs.field(default=4, validator=attrs.validators.in_(range(1, 10)))
    level: int = attrs.field(default=6, validator=attrs.validators.in_(range(0, 10)))

    @property
    def compressor_bytes(self) -> int:
        """zlib's documented deflate memory for these settings."""
        return (1 << (self.window_bits + 2)) + (1 << (self.mem_level + 9))


class BoundedDeflate(PerMessageDeflate):
    """PerMessageDeflate whose compressor window and memory are ours to choose."""

    def __init__(self, settings: DeflateSettings) -> None:
        super().__init__(
            server_max_window_bits=settings.window_bits, client_max_window_bits=settings.window_bits
        )
        self.settings = settings

    def accept(self, offer: str) -> bool | str | None:
        if not self.settings.enabled:
            return None
        accepted = super().accept(offer)
        if not isinstance(accepted, str):
            return accepted
        # Never compress with a bigger window than configured, whatever the client allowed.
        self.server_max_window_bits = min(self.server_max_window_bits, self.settings.window_bits)
        params = [p for p in accepted.split("; ") if p and not p.startswith("server_max_window_bits")]
        params.append(f"server_max_window_bits={self.server_max_window_bits}")
        return "; ".join(params)

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


def install(settings: DeflateSettings) -> None:
    """Make every WebSocket handshake hypercorn accepts from now on use ``settings``."""
    factory: Callable[[], PerMessageDeflate] = lambda: BoundedDeflate(settings)  # noqa: E731
    vars(ws_stream)[_HOOK] = factory


def uninstall() -> None:
    """Restore hypercorn's own permessage-deflate (the class it imports from wsproto)."""
    vars(ws_stream)[_HOOK] = PerMessageDeflate

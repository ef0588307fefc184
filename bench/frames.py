"""Counting a server's WebSocket messages from the frame headers alone (RFC 6455, section 5.2).

The cheap load generator (``bench.mass``) reads thousands of sockets and must spend less CPU per
frame than the server it measures, so it never inflates or decodes a payload: it reads each frame
header, skips the payload by arithmetic, and only keeps the few bytes of control frames (a ping
must be answered with its payload, a close carries the code). Reads end anywhere, so a header or
a control frame cut by a read is carried to the next one, and a data payload cut by a read is
skipped across reads. Pure and synchronous: ``tests/test_bench_quick.py`` checks it with
Hypothesis against frames cut at every possible place.
"""

from __future__ import annotations

OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA
_FIN = 0x80
_MASKED = 0x80


class FrameCounter:
    """What one connection received: complete data messages, wire bytes, and control frames.

    ``feed`` takes each read as it comes. Data frames are counted when their header arrives,
    the message when its final frame's header arrives (a server sends one frame per message,
    so that is one message per frame; fragments are counted once, at the last one).
    """

    __slots__ = ("_carry", "_skip", "controls", "messages", "wire_bytes")

    def __init__(self) -> None:
        self.messages = 0
        self.wire_bytes = 0
        # Control frames (opcode, payload) received and not yet handled by the caller.
        self.controls: list[tuple[int, bytes]] = []
        # Payload bytes of the current data frame that have not arrived yet.
        self._skip = 0
        # The start of a header or control frame that the last read cut off.
        self._carry = b""

    def feed(self, data: bytes) -> None:
        size = len(data)
        self.wire_bytes += size
        skip = self._skip
        if skip >= size:
            # The common case between headers of a large frame: nothing but payload.
            self._skip = skip - size
            return
        if self._carry:
            data = self._carry + data
            size = len(data)
        offset = skip
        messages = self.messages
        while size - offset >= 2:
            first = data[offset]
            second = data[offset + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if size - offset < 4:
                    break
                length = (data[offset + 2] << 8) | data[offset + 3]
                header = 4
            elif length == 127:
                if size - offset < 10:
                    break
                length = int.from_bytes(data[offset + 2 : offset + 10], "big")
                header = 10
            if second & _MASKED:
                # A server must not mask (RFC 6455 5.1); the key is still part of the header.
                header += 4
            opcode = first & 0x0F
            if opcode >= OPCODE_CLOSE:
                if size - offset < header + length:
                    break  # a control frame is kept whole (at most 125 bytes of payload)
                start = offset + header
                self.controls.append((opcode, bytes(data[start : start + length])))
            else:
                if size - offset < header:
                    break
                if first & _FIN:
                    messages += 1
            offset += header + length
        self.messages = messages
        if offset >= size:
            self._skip = offset - size
            self._carry = b""
        else:
            self._skip = 0
            self._carry = bytes(data[offset:])


def close_code(payload: bytes) -> int:
    """The status code of a close frame's payload (1005 when it carries none, RFC 6455 7.1.5)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


def client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """A masked client frame (clients must mask, RFC 6455 5.3) with a payload under 126 bytes."""
    if len(payload) > 125 or len(mask) != 4:
        raise ValueError(
            f"expected a payload of at most 125 bytes and a 4-byte mask, got {len(payload)} and {mask!r}"
        )
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([_FIN | opcode, _MASKED | len(payload)]) + mask + masked

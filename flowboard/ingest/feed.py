"""What sources send into aggregation, and the one parser of Kalshi's WebSocket text.

The Kalshi source and the replay parse text as it comes (:class:`FeedParser`, which counts every
message by type and every malformed one, skipped); the simulator makes trades, never text. The
channel into aggregation carries :data:`FeedItem`; raw text travels along only for
``flowboard record``, which writes it (:attr:`Received.raw`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from flowboard.errors import MalformedMessage
from flowboard.ingest.kalshi_format import decode_message, trade_from_msg
from flowboard.logs import ThrottledLog
from flowboard.model import MarketMeta, Trade

log = logging.getLogger(__name__)


@attrs.frozen(slots=True)
class RawMessage:
    """One feed message as it came off the wire, stamped with when it arrived (a recording line)."""

    received_ms: int  # wall clock, Unix ms
    text: str


@attrs.frozen(slots=True)
class Received:
    """One trade from a source, parsed, stamped with when it arrived."""

    received_ms: int  # wall clock, Unix ms
    trade: Trade
    # The feed message as it came off the wire, kept for `flowboard record` only; None when the
    # trade was never text (the simulator) or came another way (REST backfill).
    raw: str | None = None


#: What a source sends into aggregation: a trade, or a market's description (a replay's).
FeedItem = Received | MarketMeta


def _ignore(*_: object) -> None:
    pass


@attrs.frozen
class FeedCounters:
    """Where a parser reports what it read (the server's metrics; nothing by default)."""

    message: Callable[[str], None] = _ignore  # one feed message of this type
    malformed: Callable[[], None] = _ignore  # one message that could not be used (skipped)


class FeedParser:
    """Kalshi's WebSocket text -> trades. Counts every message and every malformed one; never raises."""

    def __init__(self, counters: FeedCounters | None = None) -> None:
        self.counters = counters if counters is not None else FeedCounters()
        self._malformed_log = ThrottledLog(log, "feed")

    def parse(self, text: str) -> Trade | None:
        """The trade in a feed message; None for other messages and malformed ones (counted)."""
        try:
            message = decode_message(text)
            self.counters.message(message.type)
            if message.type != "trade":
                return None
            return trade_from_msg(message.msg)
        except MalformedMessage as exc:
            self.malformed(exc)
            return None

    def malformed(self, exc: MalformedMessage) -> None:
        """Count (and log, throttled) a message that could not be used."""
        self.counters.malformed()
        self._malformed_log.warning("skipped a malformed feed message: %s", exc)

"""Wire protocol v2: the vocabulary shared by the session (encoder) and the decoder.

The format itself is specified in docs/protocol.md; this module holds its constants, the
compact encodings of trades, and the parsing of client commands. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import orjson

from flowboard.aggregate.aggregator import AnalyticsMode
from flowboard.aggregate.alerts import Alert
from flowboard.aggregate.flows import Flow
from flowboard.aggregate.movers import Move
from flowboard.errors import ProtocolError
from flowboard.model import COUNT_DECIMALS, MAX_NAME_CHARS, PRICE_DECIMALS, USD_DECIMALS, Trade

VERSION = 2

#: The default view's channels: what a client that asks for nothing gets.
DEFAULT_CHANNEL_NAMES = ("trades", "hot", "hour", "day", "top", "today")
DEFAULT_CHANNELS = frozenset(DEFAULT_CHANNEL_NAMES)
#: Trader tools: only for clients that subscribe, so that the default view pays nothing for them.
TRADER_CHANNELS = ("alerts", "flows", "movers")
#: Every channel; the others only to clients that subscribe to them.
CHANNELS = (*DEFAULT_CHANNEL_NAMES, "events", *TRADER_CHANNELS)

#: Most markets one client may watch (``watch``): each costs it their windows and sparklines.
MAX_WATCHED = 20

#: Alert kinds and mover periods as the wire names them.
ALERT_KIND_CODES = {"whale": 0, "accumulation": 1}
UNITS = {"price": PRICE_DECIMALS, "count": COUNT_DECIMALS, "usd": USD_DECIMALS}

#: Analytics modes as the wire names them.
MODE_CODES: dict[AnalyticsMode, str] = {"hour": "h", "day": "d"}
MODE_NAMES = {code: name for name, code in MODE_CODES.items()}

#: Largest client command we accept; hypercorn closes bigger ones with 1009.
MAX_COMMAND_BYTES = 64 * 1024

#: Close code for a client that cannot keep up (docs/protocol.md, "Delivery").
CLOSE_TOO_SLOW = 4008
#: Close code of a server shutting down (RFC 6455 "going away"), on /ws and /ws/stream alike.
CLOSE_GOING_AWAY = 1001


def side_code(trade: Trade) -> int:
    return 1 if trade.taker_side == "yes" else 0


def trade_point(trade: Trade, t0_ms: int) -> list[int]:
    """A sparkline point: ``[price, count, side, ts]`` with ts relative to ``t0``."""
    return [trade.yes_price, trade.count, side_code(trade), trade.ts_ms - t0_ms]


def trade_row(market: int, trade: Trade, t0_ms: int) -> list[int]:
    """A trade in a list (``x``, ``T``, ``D``): ``[id, price, count, side, ts]``."""
    return [market, trade.yes_price, trade.count, side_code(trade), trade.ts_ms - t0_ms]


def alert_row(market: int, alert: Alert, t0_ms: int) -> list[int]:
    """An alert: ``[id, kind, side, usd, contracts, trades, ts, first_ts]`` (times relative to t0)."""
    trade = alert.trade
    return [
        market,
        ALERT_KIND_CODES[alert.kind],
        side_code(trade),
        alert.usd,
        alert.contracts,
        alert.trades,
        trade.ts_ms - t0_ms,
        alert.first_ts_ms - t0_ms,
    ]


def flow_row(flow: Flow) -> list[int]:
    """A flow: ``[id, side, usd, contracts, trades, vwap]``."""
    return [flow.market, 1 if flow.side == "yes" else 0, flow.usd, flow.contracts, flow.trades, flow.vwap]


def move_row(move: Move) -> list[int]:
    """A mover: ``[id, first_price, last_price, usd, trades]``."""
    return [move.market, move.first_price, move.last_price, move.usd, move.trades]


def parse_channels(names: Iterable[str]) -> frozenset[str]:
    channels = frozenset(name.strip() for name in names if name.strip())
    unknown = channels - frozenset(CHANNELS)
    if unknown:
        raise ProtocolError(f"unknown channel(s) {sorted(unknown)}; expected any of {list(CHANNELS)}")
    return channels


@attrs.frozen(slots=True)
class Subscribe:
    channels: frozenset[str]


@attrs.frozen(slots=True)
class Unsubscribe:
    channels: frozenset[str]


@attrs.frozen(slots=True)
class Detail:
    ticker: str | None


@attrs.frozen(slots=True)
class Watch:
    """The markets the client pins, in its order (replaces the previous list)."""

    tickers: tuple[str, ...]


@attrs.frozen(slots=True)
class Parlays:
    """Whether the client's rankings (hot markets, top trades, hot events) include parlays."""

    on: bool


Command = Subscribe | Unsubscribe | Detail | Watch | Parlays


def _is_ticker(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS


def parse_watch(tickers: object) -> tuple[str, ...]:
    """A watch list: at most MAX_WATCHED distinct tickers (duplicates kept once, in order)."""
    if not isinstance(tickers, list) or not all(_is_ticker(ticker) for ticker in tickers):
        raise ProtocolError("'watch' expects \"tickers\": a list of market tickers")
    unique = tuple(dict.fromkeys(tickers))
    if len(unique) > MAX_WATCHED:
        raise ProtocolError(f"'watch' takes at most {MAX_WATCHED} markets, got {len(unique)}")
    return unique


def parse_command(text: str | bytes) -> Command:
    """One client frame as a command, or ProtocolError saying what was expected."""
    try:
        message: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"expected a JSON object, got invalid JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    op = message.get("op")
    if op in ("sub", "unsub"):
        names = message.get("ch")
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ProtocolError(f"'{op}' expects \"ch\": a list of channel names")
        channels = parse_channels(names)
        return Subscribe(channels) if op == "sub" else Unsubscribe(channels)
    if op == "detail":
        ticker = message.get("ticker")
        if ticker is not None and not _is_ticker(ticker):
            raise ProtocolError("'detail' expects \"ticker\": a market ticker or null")
        return Detail(ticker)
    if op == "watch":
        return Watch(parse_watch(message.get("tickers")))
    if op == "parlays":
        on = message.get("on")
        if not isinstance(on, bool):
            raise ProtocolError("'parlays' expects \"on\": true or false")
        return Parlays(on)
    raise ProtocolError(
        f"unknown op {str(op)[:40]!r}; expected one of 'sub', 'unsub', 'detail', 'watch', 'parlays'"
    )


def dumps(frame: list[Any]) -> bytes:
    return orjson.dumps(frame)

"""Wire protocol v1: the original dashboard's JSON messages (docs/v1.md), built from our state.

Pure: every function takes the aggregator and the time as arguments; nothing here imports
trio or a socket. The trio handler is ``flowboard.server.legacy``. Messages are serialised
with ``json.dumps`` defaults (separators ``", "`` and ``": "``) because that is the contract.

Units: our exact integers become v1's numbers at this edge only. Prices in cents (``36``, or
``36.5`` for a sub-cent price) and in float dollars; counts as contracts (``136``, or ``3.47``);
dollar volume as float dollars; times in Unix ms, except ISO strings where v1 had them.

:class:`OutQueue` is the per-client half: a bounded queue of encoded messages in which the
state messages (analytics, hot markets) conflate to their latest value, and which gives up
(close code 4008, with a reason) when a client falls too far behind.
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from typing import Any, Literal

import attrs

from flowboard.aggregate.aggregator import ANALYTICS_VIEWS, Aggregator, AnalyticsMode, floor_to
from flowboard.aggregate.events import TradeAdded
from flowboard.errors import ProtocolError
from flowboard.model import COUNT_SCALE, DAY_MS, PRICE_SCALE, USD_SCALE, Trade, iso_utc

Message = dict[str, Any]
Number = int | float

#: Message kinds, as their ``type`` (also the metrics label).
TRADE = "trade"
ANALYTICS = "analytics_update"
HOT = "hot_markets_update"
SNAPSHOT = "snapshot"
PING = "ping"
PONG = "pong"

#: Trades in a snapshot's ``recent_trades`` (docs/v1.md).
SNAPSHOT_TRADES = 200

_CENT = PRICE_SCALE // 100


def dumps(message: Message) -> str:
    """v1 serialisation: stdlib defaults, spaces after separators included."""
    return json.dumps(message)


def _exact(units: int, scale: int) -> Number:
    """An integer where the value is whole, else the nearest float."""
    whole, rest = divmod(units, scale)
    return whole if rest == 0 else units / scale


def cents(price: int) -> Number:
    return _exact(price, _CENT)


def dollars(price: int) -> float:
    return price / PRICE_SCALE


def contracts(count: int) -> Number:
    return _exact(count, COUNT_SCALE)


def usd(amount: int) -> float:
    return amount / USD_SCALE


def trade_json(trade: Trade) -> Message:
    return {
        "market_ticker": trade.ticker,
        "yes_price": cents(trade.yes_price),
        "no_price": cents(trade.no_price),
        "yes_price_dollars": dollars(trade.yes_price),
        "no_price_dollars": dollars(trade.no_price),
        "count": contracts(trade.count),
        "taker_side": trade.taker_side,
        "ts": trade.ts_ms,
    }


def _flow_direction(net_flow: int) -> str:
    if net_flow > 0:
        return "bullish"
    if net_flow < 0:
        return "bearish"
    return "neutral"


def ticker_state(agg: Aggregator, market: int, *, as_of: TradeAdded | None = None) -> Message:
    """A market's ``TickerState``; ``as_of`` a trade: as it was just after that trade, even
    when later trades of the same publish are already in the aggregator."""
    meta = agg.meta(market)
    points = agg.sparkline(market)
    if as_of is not None:
        window = as_of.window
        last: Trade | None = as_of.trade
        # The sparkline is ordered by time; cut it after this trade when later ones are in.
        for index in range(len(points) - 1, -1, -1):
            if points[index] == as_of.trade:
                points = points[: index + 1]
                break
    else:
        window = agg.window(market)
        last = agg.last_trade(market)
    yes = None if last is None else last.yes_price
    return {
        "ticker": meta.ticker,
        "last_yes_price": None if yes is None else cents(yes),
        "last_no_price": None if yes is None else cents(PRICE_SCALE - yes),
        "last_trade_time": None if last is None else last.ts_ms,
        "volume_window": contracts(window.contracts),
        "trade_count_window": window.trades,
        "yes_flow": contracts(window.yes_flow),
        "no_flow": contracts(window.no_flow),
        "price_points": [
            {
                "price": dollars(point.yes_price),
                "volume": contracts(point.count),
                "timestamp": point.ts_ms,
                "side": point.taker_side,
            }
            for point in points
        ],
        "title": meta.title,
        "category": meta.category,
        # From the market's metadata; null while unknown, never a made-up 0.
        "liquidity_dollars": None if meta.liquidity is None else usd(meta.liquidity),
        "open_interest": None if meta.open_interest is None else contracts(meta.open_interest),
        "latest_expiration_time": iso_utc(meta.close_ts_ms),
        "net_flow": contracts(window.net_flow),
        "last_yes_price_dollars": None if yes is None else dollars(yes),
        "last_no_price_dollars": None if yes is None else dollars(PRICE_SCALE - yes),
        "last_price": None if yes is None else dollars(yes),
        "flow_direction": _flow_direction(window.net_flow),
    }


def global_stats(agg: Aggregator) -> Message:
    """The market-wide figures. The session is the current UTC day, for all of them but the two
    window figures: ``daily_trades_count``, ``total_volume`` and ``total_net_flow`` count the
    trades of the day that started at ``session_start_time`` (midnight UTC), so they agree with
    each other, with "today" everywhere else, across restarts and on every edge."""
    window_contracts = sum(agg.window(market).contracts for market in agg.market_ids())
    day_contracts, day_net_flow = agg.today_flow()
    return {
        "daily_trades_count": agg.today()[0],
        "total_volume": contracts(day_contracts),
        "total_net_flow": contracts(day_net_flow),
        "session_start_time": iso_utc(floor_to(agg.now_ms, DAY_MS)),
        "active_markets_count": agg.active_markets(),
        "total_window_volume": contracts(window_contracts),
    }


def hot_markets(agg: Aggregator, *, limit: int) -> list[int]:
    """Markets with trades in the window, by ``volume_window`` (contracts) descending, then
    ticker: v1 ranks by contracts, where v2's hot set is ranked by $ volume."""
    held = [m for m in agg.market_ids() if agg.window(m).trades > 0]

    def key(market: int) -> tuple[int, str]:
        return (-agg.window(market).contracts, agg.ticker(market))

    return heapq.nsmallest(limit, held, key=key)


def trade_message(agg: Aggregator, event: TradeAdded, stats: Message) -> Message:
    """The ``trade`` message for a new trade; ``stats`` is the GlobalStats to carry."""
    return {
        "type": TRADE,
        "data": {
            "trade": trade_json(event.trade),
            "ticker_state": ticker_state(agg, event.market, as_of=event),
            "global_stats": stats,
        },
    }


def analytics_data(agg: Aggregator, mode: AnalyticsMode, now_ms: int) -> Message:
    view = agg.analytics(mode)
    bucket_ms, _ = ANALYTICS_VIEWS[mode]
    series = [
        {"timestamp": view.first_bucket_ms + index * bucket_ms, "volume_usd": usd(amount), "trade_count": n}
        for index, (amount, n) in enumerate(view.buckets)
    ]
    return {
        "mode": mode,
        "current_period": series[-1],
        "summary_stats": {
            "total_volume_usd": usd(view.total_usd),
            "total_trades": view.total_trades,
            "peak_volume_usd": usd(view.peak_usd),
            "peak_trades": view.peak_trades,
        },
        "time_series": series,
        "generated_at": now_ms,
    }


def analytics_message(agg: Aggregator, mode: AnalyticsMode, now_ms: int) -> Message:
    return {"type": ANALYTICS, "data": analytics_data(agg, mode, now_ms)}


def hot_message(agg: Aggregator) -> Message:
    markets = hot_markets(agg, limit=agg.hot_size)
    return {"type": HOT, "data": {"hot_markets": [ticker_state(agg, m) for m in markets]}}


def snapshot_message(agg: Aggregator, now_ms: int) -> Message:
    return {
        "type": SNAPSHOT,
        "data": {
            "recent_trades": [trade_json(t) for t in agg.recent_trades(SNAPSHOT_TRADES)],
            "hot_markets": [ticker_state(agg, m) for m in hot_markets(agg, limit=agg.hot_size)],
            "global_stats": global_stats(agg),
            "analytics_data": {
                "hour_mode": analytics_data(agg, "hour", now_ms),
                "day_mode": analytics_data(agg, "day", now_ms),
            },
        },
    }


def ping_message(now_ms: int) -> Message:
    return {"type": PING, "timestamp": now_ms / 1000}


def pong_message(now_ms: int) -> Message:
    return {"type": PONG, "timestamp": now_ms / 1000}


ClientRequest = Literal["ping", "get_snapshot", "pong"]


def parse_client_message(text: str | bytes) -> ClientRequest:
    """What a v1 client asked for, or ProtocolError (the original ignored anything else)."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"expected a JSON object, got invalid JSON ({exc})") from None
    except RecursionError:
        # The stdlib parser recurses once per level: '[' * 60000 exhausts the stack.
        raise ProtocolError("expected a JSON object, got JSON nested too deeply") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind in ("ping", "get_snapshot", "pong"):
        return kind  # type: ignore[no-any-return]
    raise ProtocolError(f"expected type 'ping' or 'get_snapshot', got {str(kind)[:40]!r}")


# -- per-client queue ------------------------------------------------------------------------


@attrs.frozen
class QueueLimits:
    max_messages: int = 4_000  # queued messages past which the client is closed (4008)


@attrs.frozen
class QueueStats:
    queued: int
    sent: int
    conflated: int  # state messages replaced by a newer one before being sent
    max_depth: int


class OutQueue:
    """One v1 client's messages waiting for its socket.

    Trades are never dropped or merged (a v1 client adds each one); a state message
    (``analytics_update`` of a mode, ``hot_markets_update``) still queued when a newer one
    comes is replaced by it in place. Past ``max_messages`` the client is hopeless:
    ``close_reason`` says why and nothing more is queued. The texts are shared between
    clients, so a queue costs a pointer per message.
    """

    def __init__(self, limits: QueueLimits) -> None:
        self.limits = limits
        # [kind, text, state key or ""] in send order; a list, so a state entry can be replaced.
        self._entries: deque[list[str]] = deque()
        # State key -> its entry still in the queue.
        self._keyed: dict[str, list[str]] = {}
        # Why this client must be closed with 4008, once it is.
        self.close_reason: str | None = None
        self._sent = 0
        self._conflated = 0
        self._max_depth = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, kind: str, text: str, *, key: str | None = None) -> None:
        if self.close_reason is not None:
            return
        if key is not None:
            queued = self._keyed.get(key)
            if queued is not None:
                queued[1] = text
                self._conflated += 1
                return
        if len(self._entries) >= self.limits.max_messages:
            self.close_reason = f"too slow: more than {self.limits.max_messages} v1 messages waiting"
            self._entries.clear()
            self._keyed.clear()
            return
        entry = [kind, text, key or ""]
        self._entries.append(entry)
        if key is not None:
            self._keyed[key] = entry
        self._max_depth = max(self._max_depth, len(self._entries))

    def pop(self) -> tuple[str, str] | None:
        """The next (kind, text) to send, or None."""
        if not self._entries:
            return None
        kind, text, key = self._entries.popleft()
        if key:
            del self._keyed[key]
        self._sent += 1
        return kind, text

    def statistics(self) -> QueueStats:
        return QueueStats(
            queued=len(self._entries), sent=self._sent, conflated=self._conflated, max_depth=self._max_depth
        )

"""REST backfill and de-duplication for the Kalshi feed.

``fetch_trades`` reads ``GET /markets/trades`` over a time range (all pages) and returns
the trades sorted by ``(ts_ms, trade_id)``: Kalshi documents no order. ``RecentIds`` is
the bounded set of trade ids already forwarded, so a trade that reaches us twice (REST
overlap, a replayed WebSocket frame) is forwarded once.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable

from flowboard.errors import MalformedMessage
from flowboard.ingest.kalshi_format import parse_rest_trade
from flowboard.ingest.kalshi_rest import RestClient
from flowboard.logs import ThrottledLog
from flowboard.model import Trade

log = logging.getLogger(__name__)
_malformed_log = ThrottledLog(log, "feed")

TRADES_PATH = "/markets/trades"
PAGE_LIMIT = 1000


async def fetch_trades(
    rest: RestClient,
    *,
    min_ts_s: int,
    max_ts_s: int,
    ticker: str | None = None,
    on_malformed: Callable[[MalformedMessage], None] | None = None,
) -> list[Trade]:
    """Every trade Kalshi lists with ``min_ts_s <= time <= max_ts_s`` (Unix seconds)."""
    trades: list[Trade] = []
    cursor = ""
    while True:
        params: dict[str, str | int] = {"min_ts": min_ts_s, "max_ts": max_ts_s, "limit": PAGE_LIMIT}
        if ticker:
            params["ticker"] = ticker
        if cursor:
            params["cursor"] = cursor
        page = await rest.get_json(TRADES_PATH, params)
        entries = page.get("trades") or []
        if not isinstance(entries, list):
            entries = []
        for entry in entries:
            try:
                trades.append(parse_rest_trade(entry))
            except MalformedMessage as exc:
                if on_malformed is not None:
                    on_malformed(exc)
                else:
                    _malformed_log.warning("skipping a REST trade: %s", exc)
        next_cursor = page.get("cursor") or ""
        if not isinstance(next_cursor, str) or not next_cursor or next_cursor == cursor:
            break
        cursor = next_cursor
    trades.sort(key=lambda t: (t.ts_ms, t.trade_id))
    return trades


class RecentIds:
    """Trade ids seen lately, forgotten ``ttl_ms`` of *trade time* after the newest trade.

    Expiry follows trade time, not the wall clock: during an outage nothing expires, so
    the backfill that follows still recognises what was forwarded before it. ``max_ids``
    bounds memory whatever the rate (the oldest go first).
    """

    def __init__(self, *, ttl_ms: int, max_ids: int = 1_000_000) -> None:
        self._ttl_ms = ttl_ms
        self._max_ids = max_ids
        self._ts: dict[str, int] = {}  # id -> trade time it was recorded under
        self._by_time: list[tuple[int, str]] = []  # min-heap for expiry
        self._newest_ms: int | None = None

    def __len__(self) -> int:
        return len(self._ts)

    def __contains__(self, trade_id: object) -> bool:
        return trade_id in self._ts

    def add(self, trade_id: str, ts_ms: int) -> bool:
        """Remember ``trade_id``; False when it was already known."""
        if trade_id in self._ts:
            return False
        self._ts[trade_id] = ts_ms
        heapq.heappush(self._by_time, (ts_ms, trade_id))
        if self._newest_ms is None or ts_ms > self._newest_ms:
            self._newest_ms = ts_ms
        self._expire()
        return True

    def _expire(self) -> None:
        assert self._newest_ms is not None
        horizon = self._newest_ms - self._ttl_ms
        while self._by_time and (self._by_time[0][0] < horizon or len(self._ts) > self._max_ids):
            _, trade_id = heapq.heappop(self._by_time)
            del self._ts[trade_id]

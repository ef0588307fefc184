"""Movers: markets by how far their price moved over a trailing period. Pure.

A period of length W at time ``now`` holds the trades with ``ts_ms > now - W`` (the market
window's rule). A market's move over it: the YES price of its first trade in the period
(earliest by time, then arrival) and of its last, the change between them in price units
and in hundredths of a percent of the first price (rounded to nearest, halves away from
zero), its $ volume and trades in the period. A market is a mover when the change is not
zero and its $ volume in the period is at least the minimum (so one tiny trade is not a
"mover"). Movers rank by the size of the change, then $ volume, then ticker.
"""

from __future__ import annotations

import attrs
from sortedcontainers import SortedList

from flowboard.model import HOUR_MS, MINUTE_MS, USD_SCALE, Trade

#: The periods movers are shown for, by the names the API and the wire use.
MOVER_WINDOWS: dict[str, int] = {"10m": 10 * MINUTE_MS, "1h": HOUR_MS}

#: Default least $ volume in the period for a market to count as a mover.
MOVERS_MIN_USD = 100 * USD_SCALE


@attrs.frozen(slots=True)
class Move:
    market: int
    first_price: int  # YES price, $0.000001
    last_price: int
    usd: int  # $0.00000001 in the period
    trades: int

    @property
    def change(self) -> int:
        return self.last_price - self.first_price

    @property
    def change_bp(self) -> int | None:
        """The change in hundredths of a percent of the first price; None if that was 0."""
        return change_bp(self.first_price, self.last_price)


def change_bp(first: int, last: int) -> int | None:
    if first <= 0:
        return None
    magnitude = (abs(last - first) * 20_000 + first) // (2 * first)
    return magnitude if last >= first else -magnitude


def move_key(move: Move, ticker: str) -> tuple[int, int, str]:
    return (-abs(move.change), -move.usd, ticker)


@attrs.define(slots=True)
class _Market:
    trades: SortedList = attrs.Factory(SortedList)  # (ts, arrival, yes_price)
    usd: int = 0


class MoverPeriod:
    """One trailing period's trades per market: first and last price, $ volume."""

    def __init__(self, length_ms: int) -> None:
        self.length_ms = length_ms
        self._now_ms = 0
        self._markets: dict[int, _Market] = {}
        self._by_time = SortedList()  # (ts, arrival, market, usd) of every held trade

    def add(self, market: int, trade: Trade, arrival: int) -> None:
        if trade.ts_ms <= self._now_ms - self.length_ms:
            return
        held = self._markets.get(market)
        if held is None:
            held = self._markets[market] = _Market()
        held.trades.add((trade.ts_ms, arrival, trade.yes_price))
        held.usd += trade.usd
        self._by_time.add((trade.ts_ms, arrival, market, trade.usd))

    def advance(self, now_ms: int) -> None:
        if now_ms <= self._now_ms:
            return
        self._now_ms = now_ms
        oldest_kept = now_ms - self.length_ms + 1
        while self._by_time and self._by_time[0][0] < oldest_kept:
            _, _, market, usd = self._by_time.pop(0)
            held = self._markets[market]
            held.trades.pop(0)
            held.usd -= usd
            if not held.trades:
                del self._markets[market]

    def moves(self) -> list[Move]:
        """Every market with trades in the period, unranked and unfiltered."""
        return [
            Move(market, held.trades[0][2], held.trades[-1][2], held.usd, len(held.trades))
            for market, held in self._markets.items()
        ]

    def held(self) -> int:
        return len(self._by_time)

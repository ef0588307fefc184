"""Hot events: Kalshi's events (every strike of "Bitcoin on Nov 30 at 5pm") ranked by the
10-minute $ volume of their markets.

Pure: the aggregator keeps per-event sums as market windows change (:class:`EventTotals`) and
ranks them on the clock (at most once a second, see ``Aggregator``), not per trade: a list of
events is a summary a viewer glances at, and a ranking per trade would cost a sort per trade.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from sortedcontainers import SortedList

from flowboard.aggregate.events import WindowStats
from flowboard.model import MarketMeta

#: Events in the ranking, and markets listed per event (an event may have more in its window).
HOT_EVENTS = 10
EVENT_MARKETS = 6

#: The ranking is recomputed when the clock reaches the next multiple of this.
HOT_EVENTS_PERIOD_MS = 1_000


def event_of(ticker: str, meta: MarketMeta) -> str:
    """A market's event: Kalshi's ``event_ticker`` when its metadata came, else what the
    ticker's shape says (``SERIES-EVENT-MARKET``: everything before the last ``-``)."""
    return meta.event_ticker or ticker.rpartition("-")[0] or ticker


@attrs.frozen(slots=True)
class EventMarket:
    """One market of a hot event: its window's $ volume and its last price."""

    market: int
    usd: int  # $0.00000001
    last_price: int  # YES price, $0.000001


@attrs.frozen(slots=True)
class HotEvent:
    """An event's 10-minute totals over its markets, and its busiest markets."""

    event_ticker: str
    usd: int  # $0.00000001, summed over all its markets in the window
    trades: int
    contracts: int  # hundredths
    market_count: int  # its markets with trades in the window (``markets`` lists at most EVENT_MARKETS)
    markets: tuple[EventMarket, ...]  # by (-usd, ticker)


@attrs.define(slots=True)
class _EventTotals:
    usd: int = 0
    trades: int = 0
    contracts: int = 0
    markets: set[int] = attrs.Factory(set)  # its markets with $ volume in the window


class EventTotals:
    """Running per-event sums of the windows of markets with $ volume, kept by the aggregator as
    windows change (O(log n) each), and the events in rank order, so that ranking once a second
    only reads the head."""

    def __init__(self) -> None:
        self._events: dict[str, _EventTotals] = {}
        self._ranked = SortedList()  # (-usd, event_ticker) of every event held

    def shift(self, event_ticker: str, market: int, window: WindowStats, sign: int) -> None:
        """Add (sign 1) or take out (sign -1) a market's window; windows without $ volume are
        not counted (such a market is in no ranking)."""
        if window.usd <= 0:
            return
        totals = self._events.get(event_ticker)
        if totals is None:
            totals = self._events[event_ticker] = _EventTotals()
        else:
            self._ranked.remove((-totals.usd, event_ticker))
        totals.usd += sign * window.usd
        totals.trades += sign * window.trades
        totals.contracts += sign * window.contracts
        if sign > 0:
            totals.markets.add(market)
        else:
            totals.markets.discard(market)
            if not totals.markets:
                del self._events[event_ticker]
                return
        self._ranked.add((-totals.usd, event_ticker))

    def ranked(
        self, market_usd: Callable[[int], tuple[int, str, int]], size: int = HOT_EVENTS
    ) -> tuple[HotEvent, ...]:
        """The ``size`` events with the largest $ volume, ties by event ticker, each with its
        busiest markets; ``market_usd(market)`` gives (window usd, ticker, last price)."""
        events = []
        for _, event_ticker in self._ranked.islice(0, size):
            totals = self._events[event_ticker]
            members = [(market_usd(m), m) for m in totals.markets]
            members.sort(key=lambda member: (-member[0][0], member[0][1]))
            events.append(
                HotEvent(
                    event_ticker=event_ticker,
                    usd=totals.usd,
                    trades=totals.trades,
                    contracts=totals.contracts,
                    market_count=len(members),
                    markets=tuple(
                        EventMarket(market, usd, last_price)
                        for (usd, _, last_price), market in members[:EVENT_MARKETS]
                    ),
                )
            )
        return tuple(events)

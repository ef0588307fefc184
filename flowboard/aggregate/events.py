"""What the aggregator tells the rest of Flowboard after each input.

The aggregator is the only writer of dashboard state; these events say *what changed*
so that the publisher can tell each client only what it cannot work out by itself.
A client that receives every trade derives window sums, sparklines, top-trade
insertions, analytics buckets and today's totals from the trades alone, so events
that a trade implies are marked ``derivable`` and carry the authoritative value only
for clients that do not receive that trade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from flowboard.aggregate.alerts import Alert
from flowboard.aggregate.flows import Flow
from flowboard.aggregate.movers import Move
from flowboard.model import MarketMeta, Trade

if TYPE_CHECKING:
    from flowboard.aggregate.events_rank import HotEvent


@attrs.frozen(slots=True)
class WindowStats:
    """A market's trailing-window sums (README: "Numbers", the window)."""

    contracts: int = 0  # hundredths of a contract
    usd: int = 0  # $0.00000001 (USD_DECIMALS)
    trades: int = 0
    yes_flow: int = 0  # contracts bought by YES takers, hundredths
    no_flow: int = 0  # contracts bought by NO takers, hundredths

    @property
    def net_flow(self) -> int:
        return self.yes_flow - self.no_flow


EMPTY_WINDOW = WindowStats()


@attrs.frozen(slots=True)
class MarketAdded:
    """A ticker was seen for the first time and given a small id for the wire."""

    market: int
    ticker: str


@attrs.frozen(slots=True)
class MarketForgotten:
    """A market without a trade since the retention horizon (a day) left memory; its id is
    never given again, and a trade for its ticker makes it a new market with a new id."""

    market: int
    ticker: str


@attrs.frozen(slots=True)
class TradeAdded:
    """A new trade. ``window`` is the market's window after it (for clients that do not
    get every trade of the market); ``arrival`` orders trades of equal time."""

    trade: Trade
    market: int
    window: WindowStats
    arrival: int  # aggregator-wide arrival counter; breaks ties (same ts, same usd)


@attrs.frozen(slots=True)
class WindowChanged:
    """A market's window changed in a way its trades do not imply (expiry, a late trade)."""

    market: int
    window: WindowStats


@attrs.frozen(slots=True)
class HotChanged:
    """The set of hot markets changed; ``markets`` in rank order. ``parlays``: of the ranking
    that includes combination markets (the default one leaves them out)."""

    markets: tuple[int, ...]
    parlays: bool = False


@attrs.frozen(slots=True)
class TopChanged:
    """The top-trades list changed. ``derivable``: only by inserting the trade just added.
    ``parlays``: the list that includes combination markets' trades (the default leaves them out)."""

    trades: tuple[Trade, ...]
    derivable: bool
    parlays: bool = False


@attrs.frozen(slots=True)
class HotEventsChanged:
    """The hot events' ranking or figures changed (looked at on the clock, at most once a second).
    ``parlays``: of the ranking that includes combination markets."""

    events: tuple[HotEvent, ...]
    parlays: bool = False


@attrs.frozen(slots=True)
class MetaChanged:
    """Metadata for a market arrived or changed."""

    market: int
    meta: MarketMeta


@attrs.frozen(slots=True)
class ClockTicked:
    """The current minute changed: analytics views roll, and at 00:00 UTC "today" resets."""

    minute_ms: int


@attrs.frozen(slots=True)
class AlertRaised:
    """A trade raised an alert (``flowboard.aggregate.alerts``); ``market`` is its market's id."""

    alert: Alert
    market: int


@attrs.frozen(slots=True)
class FlowsChanged:
    """The published flow list changed (at most once a second): the largest flows, ranked."""

    flows: tuple[Flow, ...]


@attrs.frozen(slots=True)
class MoversChanged:
    """The published movers of one period (``"10m"`` or ``"1h"``) changed (at most once a second)."""

    period: str
    moves: tuple[Move, ...]


Event = (
    MarketAdded
    | MarketForgotten
    | TradeAdded
    | WindowChanged
    | HotChanged
    | TopChanged
    | MetaChanged
    | ClockTicked
    | HotEventsChanged
    | AlertRaised
    | FlowsChanged
    | MoversChanged
)

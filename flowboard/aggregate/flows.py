"""Flows: per market and taker side, what the trailing window's trades add up to. Pure.

The aggregator shifts each trade in and out of here exactly when it enters and leaves the
market window, so a flow is the window's YES-taker (or NO-taker) share: $ notional,
contracts, trades, and the volume-weighted average price the taker paid.

VWAP = $ notional / contracts, in price units ($0.000001). Both are exact integers and
notional = Σ count x taker price, so the quotient is the exact average; it is rounded to the
nearest price unit, halves up (``(2 * usd + contracts) // (2 * contracts)``). For a NO flow it
is the NO price the takers paid (YES price = $1 - it).
"""

from __future__ import annotations

import attrs

from flowboard.model import Side, Trade


@attrs.frozen(slots=True)
class Flow:
    """One market side's window flow, as ranked and sent."""

    market: int
    side: Side
    usd: int  # $0.00000001
    contracts: int  # hundredths
    trades: int

    @property
    def vwap(self) -> int:
        return vwap(self.usd, self.contracts)


def vwap(usd: int, contracts: int) -> int:
    """The average taker price of ``usd`` over ``contracts``, to the nearest price unit, halves up."""
    if contracts <= 0:
        return 0
    return (2 * usd + contracts) // (2 * contracts)


def flow_key(flow: Flow, ticker: str) -> tuple[int, str, int]:
    """Largest $ notional first; ties by ticker, YES before NO."""
    return (-flow.usd, ticker, 0 if flow.side == "yes" else 1)


class Flows:
    """Running window sums per (market, side) with at least one trade in the window."""

    def __init__(self) -> None:
        self._sums: dict[tuple[int, Side], list[int]] = {}  # -> [usd, contracts, trades]

    def shift(self, market: int, trade: Trade, sign: int) -> None:
        """``trade`` entered (sign 1) or left (sign -1) the window."""
        key = (market, trade.taker_side)
        sums = self._sums.get(key)
        if sums is None:
            sums = self._sums[key] = [0, 0, 0]
        sums[0] += sign * trade.usd
        sums[1] += sign * trade.count
        sums[2] += sign
        if sums[2] == 0:
            del self._sums[key]

    def all(self) -> list[Flow]:
        return [
            Flow(market, side, usd, contracts, trades)
            for (market, side), (usd, contracts, trades) in self._sums.items()
        ]

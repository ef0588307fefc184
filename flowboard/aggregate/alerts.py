"""Whale and accumulation alerts, decided trade by trade. Pure: no I/O, time is an argument.

Two kinds, both about one market and one taker side:

- **whale**: one accepted trade whose $ volume is at least ``whale_usd``.
- **accumulation**: the taker side of one market takes at least ``accumulation_usd`` within
  ``accumulation_ms``. Precisely: ``ref`` is the latest time the aggregator has seen (its clock
  or a trade's time, whichever is later); a side's *run* is its accepted trades with
  ``ts_ms > ref - accumulation_ms``. A trade fires an alert when it joins the run (its own time
  is inside it), the run holds at least two trades with it, and the run's $ volume was below
  the threshold without it and reaches it with it. So the alert fires on the trade that crosses
  the threshold, once: the run has to fall back below the threshold (its trades ageing out)
  before the side can fire again, however many trades keep it above. A single trade is the
  whale alert's business, not an accumulation.

Parlay markets (``flowboard.model.is_parlay``) raise no alerts: their size is structural.
An alert's id is its kind and the trade that raised it, so storing it twice is a no-op.
"""

from __future__ import annotations

from typing import Literal

import attrs
from sortedcontainers import SortedList

from flowboard.model import MINUTE_MS, USD_SCALE, Side, Trade

AlertKind = Literal["whale", "accumulation"]
ALERT_KINDS: tuple[AlertKind, ...] = ("whale", "accumulation")

#: Defaults (documented in README "Trader tools"): a $1,000 trade; $5,000 on one side within 5 min.
WHALE_USD = 1_000 * USD_SCALE
ACCUMULATION_USD = 5_000 * USD_SCALE
ACCUMULATION_MS = 5 * MINUTE_MS


@attrs.frozen(slots=True)
class Alert:
    """One alert. ``trade`` raised it; the figures are the trade's (whale) or the run's."""

    kind: AlertKind
    trade: Trade
    usd: int  # $0.00000001
    contracts: int  # hundredths
    trades: int
    first_ts_ms: int  # the oldest trade counted (the trade's own time for a whale)

    @property
    def alert_id(self) -> str:
        return f"{self.kind}:{self.trade.trade_id}"


@attrs.define(slots=True)
class _Run:
    """One market side's trades inside the accumulation period, with running sums."""

    entries: SortedList = attrs.Factory(SortedList)  # (ts, arrival, usd, count)
    usd: int = 0
    contracts: int = 0


class AlertDetector:
    """Decides which trades raise alerts; holds only the trades of the accumulation period."""

    def __init__(self, *, whale_usd: int, accumulation_usd: int, accumulation_ms: int) -> None:
        self.whale_usd = whale_usd
        self.accumulation_usd = accumulation_usd
        self.accumulation_ms = accumulation_ms
        self._ref_ms = 0
        self._runs: dict[tuple[str, Side], _Run] = {}
        # (ts, arrival, ticker, side) of every held entry: expiry pops the oldest first.
        self._by_time = SortedList()

    def observe(self, trade: Trade, arrival: int, now_ms: int, *, parlay: bool) -> list[Alert]:
        """Account for an accepted trade; the alerts it raises (whale first)."""
        self._move_ref(max(now_ms, trade.ts_ms))
        if parlay:
            return []
        alerts: list[Alert] = []
        if trade.usd >= self.whale_usd:
            alerts.append(Alert("whale", trade, trade.usd, trade.count, 1, trade.ts_ms))
        run = self._add(trade, arrival)
        if run is not None:
            before = run.usd - trade.usd
            if len(run.entries) >= 2 and before < self.accumulation_usd <= run.usd:
                first_ts = run.entries[0][0]
                alerts.append(
                    Alert("accumulation", trade, run.usd, run.contracts, len(run.entries), first_ts)
                )
        return alerts

    def warm(self, trade: Trade, arrival: int, now_ms: int, *, parlay: bool) -> None:
        """Take a trade into the runs without raising anything (a restart's stored trades)."""
        self._move_ref(max(now_ms, trade.ts_ms))
        if not parlay:
            self._add(trade, arrival)

    def advance(self, now_ms: int) -> None:
        self._move_ref(now_ms)

    def held(self) -> int:
        """Trades held for the runs (bounded by the accumulation period)."""
        return len(self._by_time)

    def _add(self, trade: Trade, arrival: int) -> _Run | None:
        """Add the trade to its side's run; the run, or None when the trade is too old for it."""
        if trade.ts_ms <= self._ref_ms - self.accumulation_ms:
            return None
        key = (trade.ticker, trade.taker_side)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run()
        run.entries.add((trade.ts_ms, arrival, trade.usd, trade.count))
        run.usd += trade.usd
        run.contracts += trade.count
        self._by_time.add((trade.ts_ms, arrival, trade.ticker, trade.taker_side))
        return run

    def _move_ref(self, ref_ms: int) -> None:
        if ref_ms <= self._ref_ms:
            return
        self._ref_ms = ref_ms
        oldest_kept = ref_ms - self.accumulation_ms + 1
        while self._by_time and self._by_time[0][0] < oldest_kept:
            _, _, ticker, side = self._by_time.pop(0)
            key = (ticker, side)
            run = self._runs[key]
            _, _, usd, count = run.entries.pop(0)
            run.usd -= usd
            run.contracts -= count
            if not run.entries:
                del self._runs[key]

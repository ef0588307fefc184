"""A deliberately simple aggregator to check ``flowboard.aggregate.aggregator`` against.

It keeps every accepted trade in a list and recomputes each read from scratch for the
current time; its events are the difference between the reads before and after an
input. Its ids are those of every trade it ever accepted, like the store: it knows a
duplicate of any age, where the real one remembers ids for ``dedup_horizon_ms`` and is
told about older trades by whoever asked the store (``absent_from_store``).
Rankings come in two views, without parlays (the default) and with them; the hot events are
ranked again by ``advance`` each time the clock reached a new second since they last were.
Slow (O(n) per read) and obviously right: it shares no code with the real one except the
records it returns.
"""

from __future__ import annotations

from typing import Literal

import attrs

from flowboard.aggregate.aggregator import Analytics
from flowboard.aggregate.alerts import Alert
from flowboard.aggregate.events import (
    AlertRaised,
    ClockTicked,
    Event,
    HotChanged,
    HotEventsChanged,
    MarketAdded,
    MarketForgotten,
    MetaChanged,
    TopChanged,
    TradeAdded,
    WindowChanged,
    WindowStats,
)
from flowboard.aggregate.events_rank import EventMarket, HotEvent
from flowboard.aggregate.flows import Flow
from flowboard.aggregate.movers import Move
from flowboard.model import MarketMeta, Trade, is_parlay

HOT_EVENTS = 10
EVENT_MARKETS = 6

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def retention_start(now_ms: int, window_ms: int) -> int:
    """The day view's first hour, or the window's first minute if that is earlier."""
    day_view_start = (now_ms // HOUR - 23) * HOUR
    window_start_minute = (now_ms - window_ms + 1) // MINUTE * MINUTE
    return min(day_view_start, window_start_minute)


def dedup_start(now_ms: int, dedup_horizon_ms: int) -> int:
    """Trades before the start of this minute need the store to tell a duplicate."""
    return (now_ms - dedup_horizon_ms) // MINUTE * MINUTE


@attrs.frozen
class _Accepted:
    trade: Trade
    market: int
    arrival: int
    parlay: bool = False  # when it was accepted (alerts judge a trade by what was known then)


@attrs.frozen
class _Rankings:
    windows: tuple[WindowStats, ...]
    top: tuple[tuple[Trade, ...], tuple[Trade, ...]]  # without, with parlays
    hot: tuple[tuple[int, ...], tuple[int, ...]]


class ReferenceAggregator:
    def __init__(
        self,
        *,
        window_ms: int = 600_000,
        sparkline_len: int = 20,
        hot_size: int = 12,
        top_size: int = 10,
        tape_size: int = 200,
        market_tape_size: int = 50,
        dedup_horizon_ms: int = 600_000,
        whale_usd: int = 1_000 * 10**8,
        accumulation_usd: int = 5_000 * 10**8,
        accumulation_ms: int = 5 * MINUTE,
        movers_min_usd: int = 100 * 10**8,
    ) -> None:
        self.window_ms = window_ms
        self.sparkline_len = sparkline_len
        self.hot_size = hot_size
        self.top_size = top_size
        self.tape_size = tape_size
        self.market_tape_size = market_tape_size
        self.dedup_horizon_ms = dedup_horizon_ms
        self.whale_usd = whale_usd
        self.accumulation_usd = accumulation_usd
        self.accumulation_ms = accumulation_ms
        self.movers_min_usd = movers_min_usd
        self.raised: list[Alert] = []  # every alert, in the order raised
        self.latest_ms = 0  # the latest clock or trade time seen: accumulation runs end there
        self.now_ms = 0
        self.started = False
        self.accepted: list[_Accepted] = []
        self.seen_ids: set[str] = set()
        self.tickers: list[str] = []  # by market id, forgotten ones included
        self.metas: list[MarketMeta] = []
        self.events_ranked: dict[bool, tuple[HotEvent, ...]] = {False: (), True: ()}
        self.ranked_at: int | None = None  # the clock when advance() last ranked the hot events
        self.forgotten: set[int] = set()
        self.history_len = max(sparkline_len, market_tape_size)

    @property
    def trades_total(self) -> int:
        return len(self.accepted)

    # -- inputs --------------------------------------------------------------------------

    def advance(self, now_ms: int) -> list[Event]:
        before_ranked = self.ranked_at
        backwards = self.started and now_ms < self.now_ms
        events = self._clock(now_ms)
        if not backwards and (before_ranked is None or self.now_ms // 1000 != before_ranked // 1000):
            self.ranked_at = self.now_ms
            for parlays in (False, True):
                ranked = self._rank_events(parlays)
                if ranked != self.events_ranked[parlays]:
                    self.events_ranked[parlays] = ranked
                    events.append(HotEventsChanged(ranked, parlays))
        return events

    def _clock(self, now_ms: int) -> list[Event]:
        if self.started and now_ms <= self.now_ms:
            return []
        events: list[Event] = []
        if self.started and now_ms // MINUTE != self.now_ms // MINUTE:
            events.append(ClockTicked(now_ms // MINUTE * MINUTE))
        before = self._rankings()
        histories = {market: self._retained(market)[-self.history_len :] for market in self.market_ids()}
        self.started = True
        self.now_ms = now_ms
        self.latest_ms = max(self.latest_ms, now_ms)
        after = self._rankings()
        for market, window in enumerate(after.windows):
            if window != before.windows[market]:
                events.append(WindowChanged(market, window))
        for parlays in (False, True):
            if after.top[parlays] != before.top[parlays]:
                events.append(TopChanged(after.top[parlays], derivable=False, parlays=parlays))
        for parlays in (False, True):
            if set(after.hot[parlays]) != set(before.hot[parlays]):
                events.append(HotChanged(after.hot[parlays], parlays))
        # A market is forgotten when its last retained trade leaves; in the order of the oldest
        # trade of its history (its latest history_len trades) before the move.
        emptied = [(history[0].trade.ts_ms, market) for market, history in histories.items() if history]
        forgotten_now = set()
        for _, market in sorted(emptied):
            if not self._retained(market):
                self.forgotten.add(market)
                forgotten_now.add(market)
                events.append(MarketForgotten(market, self.tickers[market]))
        # Hot events naming a market just forgotten (the clock jumped) are ranked again at once.
        named = {
            member.market
            for ranked in self.events_ranked.values()
            for event in ranked
            for member in event.markets
        }
        if named & forgotten_now:
            self.ranked_at = self.now_ms
            for parlays in (False, True):
                ranked = self._rank_events(parlays)
                if ranked != self.events_ranked[parlays]:
                    self.events_ranked[parlays] = ranked
                    events.append(HotEventsChanged(ranked, parlays))
        return events

    def add_trade(self, trade: Trade, now_ms: int, *, absent_from_store: bool = False) -> list[Event]:
        events = self._clock(now_ms)
        if absent_from_store:
            assert trade.trade_id not in self.seen_ids, "a test vouched for a trade the store has"
        if trade.trade_id in self.seen_ids or trade.ts_ms < retention_start(self.now_ms, self.window_ms):
            return events
        if trade.ts_ms < dedup_start(self.now_ms, self.dedup_horizon_ms) and not absent_from_store:
            return events
        market = self._market_for(trade.ticker, events)
        before = self._rankings()
        self.seen_ids.add(trade.trade_id)
        arrival = len(self.accepted)
        parlay = is_parlay(trade.ticker, self.metas[market])
        self.accepted.append(_Accepted(trade, market, arrival, parlay))
        after = self._rankings()
        events.append(TradeAdded(trade, market, self.window(market), arrival))
        for alert in self._alerts_raised_by(trade, parlay):
            self.raised.append(alert)
            events.append(AlertRaised(alert, market))
        late = trade.ts_ms <= self.now_ms - self.window_ms
        if late:
            events.append(WindowChanged(market, self.window(market)))
        for parlays in (False, True):
            if late:
                events.append(TopChanged(after.top[parlays], derivable=False, parlays=parlays))
            elif after.top[parlays] != before.top[parlays]:
                events.append(TopChanged(after.top[parlays], derivable=True, parlays=parlays))
        for parlays in (False, True):
            if set(after.hot[parlays]) != set(before.hot[parlays]):
                events.append(HotChanged(after.hot[parlays], parlays))
        return events

    def _alerts_raised_by(self, trade: Trade, parlay: bool) -> list[Alert]:
        """Whale: usd at least the floor. Accumulation: the side's trades timed after
        latest - period reach the threshold with this trade and not without it (two at least)."""
        self.latest_ms = max(self.latest_ms, trade.ts_ms)
        if parlay:
            return []
        alerts = []
        if trade.usd >= self.whale_usd:
            alerts.append(Alert("whale", trade, trade.usd, trade.count, 1, trade.ts_ms))
        start = self.latest_ms - self.accumulation_ms
        run = [
            a.trade
            for a in self.accepted
            if not a.parlay
            and a.trade.ticker == trade.ticker
            and a.trade.taker_side == trade.taker_side
            and a.trade.ts_ms > start
        ]
        if trade.ts_ms > start and len(run) >= 2:
            total = sum(t.usd for t in run)
            if total - trade.usd < self.accumulation_usd <= total:
                contracts = sum(t.count for t in run)
                first = min(t.ts_ms for t in run)
                alerts.append(Alert("accumulation", trade, total, contracts, len(run), first))
        return alerts

    def set_meta(self, meta: MarketMeta) -> list[Event]:
        events: list[Event] = []
        market = self._market_for(meta.ticker, events)
        if self.metas[market] != meta:
            before = self._rankings()
            self.metas[market] = meta
            events.append(MetaChanged(market, meta))
            after = self._rankings()
            if after.top[False] != before.top[False]:
                events.append(TopChanged(after.top[False], derivable=False))
            if set(after.hot[False]) != set(before.hot[False]):
                events.append(HotChanged(after.hot[False]))
        return events

    def _market_for(self, ticker: str, events: list[Event]) -> int:
        market = self.market_id(ticker)
        if market is None:
            self.tickers.append(ticker)
            self.metas.append(MarketMeta(ticker))
            market = len(self.tickers) - 1
            events.append(MarketAdded(market, ticker))
        return market

    def _rankings(self) -> _Rankings:
        return _Rankings(
            tuple(self.window(market) for market in range(len(self.tickers))),
            (self.top_trades(False), self.top_trades(True)),
            (self.hot(False), self.hot(True)),
        )

    def is_parlay(self, market: int) -> bool:
        return self.tickers[market].startswith("KXMVE") or self.metas[market].mve_collection_ticker != ""

    def _rank_events(self, parlays: bool) -> tuple[HotEvent, ...]:
        shown = [
            m
            for m in range(len(self.tickers))
            if self.window(m).usd > 0 and (parlays or not self.is_parlay(m))
        ]
        names = {
            m: self.metas[m].event_ticker or self.tickers[m].rpartition("-")[0] or self.tickers[m]
            for m in shown
        }
        events = []
        for name in set(names.values()):
            members = sorted(
                (m for m in shown if names[m] == name), key=lambda m: (-self.window(m).usd, self.tickers[m])
            )
            listed = []
            for m in members[:EVENT_MARKETS]:
                last = self.last_trade(m)
                assert last is not None
                listed.append(EventMarket(m, self.window(m).usd, last.yes_price))
            events.append(
                HotEvent(
                    event_ticker=name,
                    usd=sum(self.window(m).usd for m in members),
                    trades=sum(self.window(m).trades for m in members),
                    contracts=sum(self.window(m).contracts for m in members),
                    market_count=len(members),
                    markets=tuple(listed),
                )
            )
        events.sort(key=lambda e: (-e.usd, e.event_ticker))
        return tuple(events[:HOT_EVENTS])

    def hot_events(self, parlays: bool = False) -> tuple[HotEvent, ...]:
        return self.events_ranked[parlays]

    # -- reads ---------------------------------------------------------------------------

    def _retained(self, market: int | None = None) -> list[_Accepted]:
        """Trades still remembered, oldest first by (ts, arrival)."""
        start = retention_start(self.now_ms, self.window_ms)
        kept = [a for a in self.accepted if a.trade.ts_ms >= start and market in (None, a.market)]
        return sorted(kept, key=lambda a: (a.trade.ts_ms, a.arrival))

    def _in_window(self) -> list[_Accepted]:
        return [a for a in self.accepted if a.trade.ts_ms > self.now_ms - self.window_ms]

    def market_id(self, ticker: str) -> int | None:
        live = [m for m in self.market_ids() if self.tickers[m] == ticker]
        return live[0] if live else None

    def ticker(self, market: int) -> str:
        return self.tickers[market]

    def markets_count(self) -> int:
        return len(self.market_ids())

    def market_ids(self) -> list[int]:
        return [m for m in range(len(self.tickers)) if m not in self.forgotten]

    def meta(self, market: int) -> MarketMeta:
        return self.metas[market]

    def window(self, market: int) -> WindowStats:
        trades = [a.trade for a in self._in_window() if a.market == market]
        return WindowStats(
            contracts=sum(t.count for t in trades),
            usd=sum(t.count * t.taker_price for t in trades),
            trades=len(trades),
            yes_flow=sum(t.count for t in trades if t.taker_side == "yes"),
            no_flow=sum(t.count for t in trades if t.taker_side == "no"),
        )

    def sparkline(self, market: int) -> tuple[Trade, ...]:
        return tuple(a.trade for a in self._retained(market)[-self.sparkline_len :])

    def last_trade(self, market: int) -> Trade | None:
        retained = self._retained(market)
        return retained[-1].trade if retained else None

    def hot(self, parlays: bool = False) -> tuple[int, ...]:
        usd = {market: self.window(market).usd for market in range(len(self.tickers))}
        shown = [m for m in usd if usd[m] > 0 and (parlays or not self.is_parlay(m))]
        ranked = sorted(shown, key=lambda m: (-usd[m], self.tickers[m]))
        return tuple(ranked[: self.hot_size])

    def top_trades(self, parlays: bool = False) -> tuple[Trade, ...]:
        shown = [a for a in self._in_window() if parlays or not self.is_parlay(a.market)]
        ranked = sorted(shown, key=lambda a: (-a.trade.usd, a.arrival))
        return tuple(a.trade for a in ranked[: self.top_size])

    def recent_trades(self, limit: int) -> tuple[Trade, ...]:
        newest_first = [a.trade for a in reversed(self._retained())]
        return tuple(newest_first[: min(limit, self.tape_size)])

    def market_trades(self, market: int, limit: int) -> tuple[Trade, ...]:
        newest_first = [a.trade for a in reversed(self._retained(market))]
        return tuple(newest_first[: min(limit, self.market_tape_size)])

    def analytics(self, mode: Literal["hour", "day"]) -> Analytics:
        bucket_ms, count = (MINUTE, 60) if mode == "hour" else (HOUR, 24)
        first = (self.now_ms // bucket_ms - (count - 1)) * bucket_ms
        buckets = []
        for index in range(count):
            start = first + index * bucket_ms
            inside = [a.trade for a in self.accepted if start <= a.trade.ts_ms < start + bucket_ms]
            buckets.append((sum(t.usd for t in inside), len(inside)))
        return Analytics(
            mode=mode,
            bucket_ms=bucket_ms,
            first_bucket_ms=first,
            buckets=tuple(buckets),
            total_usd=sum(b[0] for b in buckets),
            total_trades=sum(b[1] for b in buckets),
            peak_usd=max(b[0] for b in buckets),
            peak_trades=max(b[1] for b in buckets),
        )

    def today(self) -> tuple[int, int]:
        trades = [a.trade for a in self.accepted if a.trade.ts_ms // DAY == self.now_ms // DAY]
        return len(trades), sum(t.usd for t in trades)

    def active_markets(self) -> int:
        return sum(1 for market in range(len(self.tickers)) if self.window(market).trades > 0)

    # -- trader tools ----------------------------------------------------------------------

    def alerts(self, since_ms: int = 0, limit: int = 1_000) -> list[Alert]:
        """The 1,000 latest by (time, order raised), of those at or after ``since_ms``, newest first."""
        order = sorted(range(len(self.raised)), key=lambda i: (self.raised[i].trade.ts_ms, i), reverse=True)
        kept = [self.raised[i] for i in order[:1_000]]
        return [alert for alert in kept if alert.trade.ts_ms >= since_ms][:limit]

    def flows(self, limit: int, *, include_parlays: bool = False) -> tuple[Flow, ...]:
        flows = []
        for market, ticker in enumerate(self.tickers):
            if not include_parlays and is_parlay(ticker, self.metas[market]):
                continue
            for side in ("yes", "no"):
                trades = [
                    a.trade for a in self._in_window() if a.market == market and a.trade.taker_side == side
                ]
                if trades:
                    usd = sum(t.usd for t in trades)
                    contracts = sum(t.count for t in trades)
                    flows.append(Flow(market, side, usd, contracts, len(trades)))
        flows.sort(key=lambda f: (-f.usd, self.tickers[f.market], f.side != "yes"))
        return tuple(flows[:limit])

    def movers(self, period: str, limit: int, *, include_parlays: bool = False) -> tuple[Move, ...]:
        length = {"10m": 10 * MINUTE, "1h": HOUR}[period]
        moves = []
        for market, ticker in enumerate(self.tickers):
            if not include_parlays and is_parlay(ticker, self.metas[market]):
                continue
            held = sorted(
                (a for a in self.accepted if a.market == market and a.trade.ts_ms > self.now_ms - length),
                key=lambda a: (a.trade.ts_ms, a.arrival),
            )
            if not held:
                continue
            usd = sum(a.trade.usd for a in held)
            move = Move(market, held[0].trade.yes_price, held[-1].trade.yes_price, usd, len(held))
            if move.last_price != move.first_price and usd >= self.movers_min_usd:
                moves.append(move)
        moves.sort(key=lambda m: (-abs(m.last_price - m.first_price), -m.usd, self.tickers[m.market]))
        return tuple(moves[:limit])


# -- history (candles, export): recomputed from a plain list of trades ----------------------


@attrs.frozen
class ReferenceCandle:
    start_ms: int
    open: int
    high: int
    low: int
    close: int
    usd: int
    trades: int
    last_trade_ms: int


def reference_candles(
    arrived: list[Trade], ticker: str, interval_ms: int, since_ms: int, limit: int
) -> tuple[list[ReferenceCandle], int | None]:
    """One page of ``ticker``'s candles from every trade in the order it arrived: the periods
    from the one ``since_ms`` falls in, ``limit`` of them; and the start of the period of the
    market's first trade after the page, or None."""
    first = since_ms // interval_ms * interval_ms
    end = first + limit * interval_ms
    mine = [t for t in arrived if t.ticker == ticker]
    # A stable sort by time keeps the trades of one millisecond in arrival order.
    ordered = sorted(mine, key=lambda t: t.ts_ms)
    candles = []
    for start in range(first, end, interval_ms):
        inside = [t for t in ordered if start <= t.ts_ms < start + interval_ms]
        if inside:
            prices = [t.yes_price for t in inside]
            candles.append(
                ReferenceCandle(
                    start_ms=start,
                    open=prices[0],
                    high=max(prices),
                    low=min(prices),
                    close=prices[-1],
                    usd=sum(t.count * t.taker_price for t in inside),
                    trades=len(inside),
                    last_trade_ms=max(t.ts_ms for t in inside),
                )
            )
    later = [t.ts_ms for t in ordered if t.ts_ms >= end]
    return candles, (min(later) // interval_ms * interval_ms if later else None)


def reference_export(
    arrived: list[Trade], since_ms: int, until_ms: int, ticker: str | None, min_usd: int
) -> list[Trade]:
    """The trades an export gives: in the range, of the market (or all), of at least $ min_usd,
    by time and then arrival."""
    chosen = [
        t
        for t in arrived
        if since_ms <= t.ts_ms < until_ms
        and ticker in (None, t.ticker)
        and t.count * t.taker_price >= min_usd
    ]
    return sorted(chosen, key=lambda t: t.ts_ms)

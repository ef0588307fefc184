"""The aggregation core: every number the dashboard shows, kept current trade by trade.

Pure and synchronous: no I/O and no trio; time is always an argument (Unix ms, UTC).
Inputs (``add_trade``, ``advance``, ``set_meta``) return the events of
``flowboard.aggregate.events`` that say what changed; reads are cheap and used for
snapshots, per-client frames and HTTP.

Cost per trade is O(log n) in the trades held, never a rescan of a window: in-window
trades sit in two sorted lists (by time, so expiry pops from the front; by size, so the
top trades are the head), window sums are running totals, markets are ranked in a sorted
list, and analytics are per-minute and per-hour running totals.

Memory is bounded by what is shown, never by how many trades were seen: the window's
trades, a fixed number of recent trades on the tape and per market, the hour and day
views as per-bucket totals, and the ids of the trades of the last ``dedup_horizon_ms``
of trade time. Two horizons say what is forgotten:

- ``retention_start_ms``: the oldest trade time any read can show (the start of the day
  view, or of the window if that is longer). Older trades leave the tape and the market
  histories; a trade that arrives already older than that is refused. A market whose
  latest trade leaves it is forgotten (``MarketForgotten``): only its id's slot remains.
- ``dedup_start_ms``: ids are remembered for the trades at or after it, as long as a
  duplicate can still come from the feed (Kalshi's reconciliation re-reads 150 s and a
  backfill starts 5 s before the newest trade forwarded; see README "Memory"). A trade
  older than that may have been accepted before and forgotten since: only the store, whose
  unique key on ``trade_id`` is the authority, can tell. ``add_trade`` accepts it only
  when the caller vouches that the store does not have it (``absent_from_store``) and
  refuses it otherwise, so it is counted once or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import attrs
from sortedcontainers import SortedDict, SortedKeyList, SortedList

from flowboard.aggregate.alerts import ACCUMULATION_MS, ACCUMULATION_USD, WHALE_USD, Alert, AlertDetector
from flowboard.aggregate.events import (
    EMPTY_WINDOW,
    AlertRaised,
    ClockTicked,
    Event,
    FlowsChanged,
    HotChanged,
    HotEventsChanged,
    MarketAdded,
    MarketForgotten,
    MetaChanged,
    MoversChanged,
    TopChanged,
    TradeAdded,
    WindowChanged,
    WindowStats,
)
from flowboard.aggregate.events_rank import HOT_EVENTS_PERIOD_MS, EventTotals, HotEvent, event_of
from flowboard.aggregate.flows import Flow, Flows, flow_key
from flowboard.aggregate.movers import MOVER_WINDOWS, MOVERS_MIN_USD, Move, MoverPeriod, move_key
from flowboard.errors import ConfigError
from flowboard.model import DAY_MS, HOUR_MS, MINUTE_MS, MarketMeta, Trade, is_parlay

AnalyticsMode = Literal["hour", "day"]

#: bucket length and bucket count of each analytics view (README: "Numbers", Analytics)
ANALYTICS_VIEWS: dict[AnalyticsMode, tuple[int, int]] = {
    "hour": (MINUTE_MS, 60),
    "day": (HOUR_MS, 24),
}


#: Alerts held for reads and snapshots (older ones stay in the store).
ALERTS_KEPT = 1_000
#: Rows of the flow and mover lists published to subscribed clients (per mover period).
FLOWS_PUBLISHED = 20
MOVERS_PUBLISHED = 20


def floor_to(ts_ms: int, unit_ms: int) -> int:
    """Start of the ``unit_ms``-long UTC period that contains ``ts_ms``."""
    return ts_ms - ts_ms % unit_ms


def view_start_ms(mode: AnalyticsMode, now_ms: int) -> int:
    """Start of the oldest bucket of an analytics view at ``now_ms``."""
    bucket_ms, bucket_count = ANALYTICS_VIEWS[mode]
    return floor_to(now_ms, bucket_ms) - (bucket_count - 1) * bucket_ms


#: How long trade ids are remembered by default, in trade time before now: the window, which
#: covers Kalshi's reconciliation (150 s) and backfill margin (5 s) with room for a queue.
DEFAULT_DEDUP_HORIZON_MS = 600_000


def dedup_start_ms(now_ms: int, dedup_horizon_ms: int) -> int:
    """The oldest trade time whose id is remembered at ``now_ms``; older trades need the store.

    Whole minutes, because ids are forgotten a minute of trade time at a time.
    """
    return floor_to(now_ms - dedup_horizon_ms, MINUTE_MS)


def retention_start_ms(now_ms: int, window_ms: int) -> int:
    """The oldest trade time any read can show at ``now_ms``; older trades are forgotten.

    It is the start of the day view, or of the minute the window starts in when the
    window reaches further back (windows longer than 22 hours). "Today" starts at UTC
    midnight, never before the day view, so it needs nothing older.
    """
    return min(view_start_ms("day", now_ms), floor_to(now_ms - window_ms + 1, MINUTE_MS))


@attrs.frozen(slots=True)
class Analytics:
    """One analytics view: $ volume and trade count per bucket, by trade time (UTC)."""

    mode: AnalyticsMode
    bucket_ms: int
    first_bucket_ms: int  # start of the oldest bucket
    buckets: tuple[tuple[int, int], ...]  # (usd, trades) per bucket, oldest first; the last one is now's
    total_usd: int
    total_trades: int
    peak_usd: int
    peak_trades: int

    @property
    def current(self) -> tuple[int, int]:
        """(usd, trades) of the live current period."""
        return self.buckets[-1]


@attrs.frozen(slots=True)
class AggregatorStatistics:
    """How much the aggregator holds; each figure is bounded by a horizon or a size setting."""

    markets: int
    trades_in_window: int
    remembered_trade_ids: int
    market_history_trades: int  # the latest trades held per market, summed over the markets
    tape_trades: int
    minute_buckets: int
    hour_buckets: int


@attrs.frozen(slots=True)
class MinuteSummary:
    """One minute of stored trades, as much as a restart needs of trades it does not reload."""

    start_ms: int  # a multiple of MINUTE_MS
    usd: int  # sum of the trades' usd
    trades: int
    contracts: int  # sum of the trades' counts
    net_flow: int  # YES takers' counts - NO takers' counts
    trade_ids: Sequence[str]
    tickers: Sequence[str]  # the markets traded in the minute, in the order of their first trade in it


@attrs.frozen(slots=True)
class _Held:
    """An accepted trade with what orders it: its market id and its arrival number."""

    trade: Trade
    market: int
    arrival: int


def _by_time(held: _Held) -> tuple[int, int]:
    return held.trade.ts_ms, held.arrival


def _by_size(held: _Held) -> tuple[int, int]:
    return -held.trade.usd, held.arrival


def _shifted(window: WindowStats, trade: Trade, sign: int) -> WindowStats:
    """``window`` with ``trade`` added (sign 1) or removed (sign -1)."""
    count = sign * trade.count
    return WindowStats(
        contracts=window.contracts + count,
        usd=window.usd + sign * trade.usd,
        trades=window.trades + sign,
        yes_flow=window.yes_flow + (count if trade.taker_side == "yes" else 0),
        no_flow=window.no_flow + (count if trade.taker_side == "no" else 0),
    )


class _LatestTrades:
    """The ``capacity`` latest trades by (ts, arrival): a late trade goes to its place,
    or nowhere if the list is full and it is older than all of them."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._held = SortedKeyList(key=_by_time)

    def add(self, held: _Held) -> None:
        self._held.add(held)
        if len(self._held) > self._capacity:
            self._held.pop(0)

    def drop_older_than(self, ts_ms: int) -> None:
        while self._held and self._held[0].trade.ts_ms < ts_ms:
            self._held.pop(0)

    def oldest_first(self, limit: int) -> tuple[Trade, ...]:
        """The latest ``limit`` trades, oldest first."""
        size = len(self._held)
        return tuple(held.trade for held in self._held.islice(max(0, size - limit), size))

    def newest_first(self, limit: int) -> tuple[Trade, ...]:
        size = len(self._held)
        return tuple(held.trade for held in self._held.islice(max(0, size - limit), size, reverse=True))

    def latest(self) -> Trade | None:
        return self._held[-1].trade if self._held else None

    def oldest_ts(self) -> int | None:
        return self._held[0].trade.ts_ms if self._held else None

    def __len__(self) -> int:
        return len(self._held)


@attrs.define(slots=True)
class _Totals:
    """Running $ volume and trade count of one analytics bucket, and its contracts and net flow
    (for v1's day totals)."""

    usd: int = 0
    trades: int = 0
    contracts: int = 0  # hundredths
    net_flow: int = 0  # hundredths, YES takers +, NO takers -


@attrs.define(slots=True)
class _Market:
    ticker: str
    meta: MarketMeta
    history: _LatestTrades  # its sparkline and its own tape: both are its latest trades
    window: WindowStats = EMPTY_WINDOW
    parlay: bool = False  # a combination market: left out of the default rankings
    event: str = ""  # its event (event_of): where its window counts in the hot events


class Aggregator:
    """Per-market windows, sparklines and tapes, hot markets, top trades, hot events, analytics
    and today.

    Ties are broken the same way everywhere, so that a client folding the trade stream
    gets the same values: trades are ordered in time by (ts_ms, arrival), by size by
    (-usd, arrival), and markets by (-window usd, ticker).

    The rankings (hot markets, top trades, hot events) are kept twice: without combination
    ("parlay") markets, the default view, and with them (``parlays=True``); their events say
    which one changed.
    """

    def __init__(
        self,
        *,
        window_ms: int = 600_000,
        sparkline_len: int = 20,
        hot_size: int = 12,
        top_size: int = 10,
        tape_size: int = 200,
        market_tape_size: int = 50,
        dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
        whale_usd: int = WHALE_USD,
        accumulation_usd: int = ACCUMULATION_USD,
        accumulation_ms: int = ACCUMULATION_MS,
        movers_min_usd: int = MOVERS_MIN_USD,
        lists_period_ms: int = 0,
    ) -> None:
        """``lists_period_ms``: recompute the flow and mover lists that clients subscribe to on
        this grid of the clock and announce them when changed; 0 (the default, for tools and
        tests that only read) never announces them, and ``flows()``/``movers()`` still answer."""
        sizes = {
            "window_ms": window_ms,
            "sparkline_len": sparkline_len,
            "hot_size": hot_size,
            "top_size": top_size,
            "tape_size": tape_size,
            "market_tape_size": market_tape_size,
            "dedup_horizon_ms": dedup_horizon_ms,
            "whale_usd": whale_usd,
            "accumulation_usd": accumulation_usd,
            "accumulation_ms": accumulation_ms,
            "movers_min_usd": movers_min_usd,
        }
        for name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"aggregator {name} must be at least 1, got {value}")
        self._window_ms = window_ms
        self._sparkline_len = sparkline_len
        self._hot_size = hot_size
        self._top_size = top_size
        self._tape_size = tape_size
        self._market_tape_size = market_tape_size
        self._history_len = max(sparkline_len, market_tape_size)
        self._dedup_horizon_ms = dedup_horizon_ms

        self._now_ms = 0
        self._clock_started = False  # the first time passed in sets the clock without a tick
        self._trades_total = 0  # also the next trade's arrival number

        # Indexed by market id; None once forgotten (ids are never given twice).
        self._markets: list[_Market | None] = []
        self._market_ids: dict[str, int] = {}  # the markets held

        # Every in-window trade, twice: oldest first so expiry pops from the front, and
        # largest first so the top trades are the head.
        self._window_by_time = SortedKeyList(key=_by_time)
        self._window_by_size = SortedKeyList(key=_by_size)
        # The same without parlays' trades: the default top trades are its head.
        self._window_by_size_plain = SortedKeyList(key=_by_size)
        # (-window usd, ticker, market) of markets with window usd > 0: hot is the head.
        self._ranked = SortedList()
        self._ranked_plain = SortedList()  # the same without parlays
        # Per-event sums without and with parlays; the hot events as last ranked from them, and
        # when to rank them again.
        self._event_totals = {False: EventTotals(), True: EventTotals()}
        self._hot_events: dict[bool, tuple[HotEvent, ...]] = {False: (), True: ()}
        self._hot_events_due_ms = 0
        self._active_markets = 0  # markets with at least one trade in window

        self._seen_ids: set[str] = set()  # ids of the trades since dedup_start_ms
        self._ids_by_minute: SortedDict = SortedDict()  # minute start -> list of the ids in _seen_ids
        # (oldest trade time, market) of every market holding trades: which histories the
        # retention horizon reaches, without a list of markets per minute of the day.
        self._histories_by_oldest = SortedList()
        self._market_history_trades = 0  # the sum of the markets' history lengths
        self._tape = _LatestTrades(tape_size)
        # Per view, bucket start -> _Totals: minutes for the hour view, hours for the day view
        # (and today, whose hours are all inside the day view).
        self._buckets: dict[AnalyticsMode, SortedDict] = {mode: SortedDict() for mode in ANALYTICS_VIEWS}

        # Trader tools (flowboard.aggregate.alerts, flows, movers).
        self._alert_detector = AlertDetector(
            whale_usd=whale_usd, accumulation_usd=accumulation_usd, accumulation_ms=accumulation_ms
        )
        # The latest ALERTS_KEPT as (ts, raised, alert), oldest first: by the raising trade's time,
        # ties in the order raised (what a client that inserts them as they come ends up with).
        self._alerts = SortedList()
        self._alert_ids: set[str] = set()
        self._alerts_raised = 0
        self._flows = Flows()
        self._mover_periods = {name: MoverPeriod(length_ms) for name, length_ms in MOVER_WINDOWS.items()}
        self._movers_min_usd = movers_min_usd
        # What subscribed clients were last told, recomputed on whole seconds of the clock.
        self._lists_period_ms = lists_period_ms
        self._lists_due_ms = 0
        self._published_flows: tuple[Flow, ...] = ()
        self._published_moves: dict[str, tuple[Move, ...]] = {name: () for name in MOVER_WINDOWS}

    # -- inputs ------------------------------------------------------------------------------

    def add_trade(self, trade: Trade, now_ms: int, *, absent_from_store: bool = False) -> list[Event]:
        """Account for ``trade`` as of ``now_ms``. Ignored (only the clock's own events are
        returned): a remembered ``trade_id``, a trade older than the retention horizon, and one
        older than the de-duplication horizon unless ``absent_from_store`` (see
        ``needs_store_check``)."""
        events = self._move_clock(now_ms)
        if not self._accepts(trade, absent_from_store):
            return events

        market = self._market_for(trade.ticker, events)
        held = _Held(trade, market, self._trades_total)
        self._trades_total += 1
        self._remember(held)

        hot_before = self._hot_members(False), self._hot_members(True)
        in_window = trade.ts_ms > self._now_ms - self._window_ms
        entered_top = (False, False)
        if in_window:
            key = _by_size(held)
            entered_top = (
                not self._market(market).parlay
                and self._window_by_size_plain.bisect_key_left(key) < self._top_size,
                self._window_by_size.bisect_key_left(key) < self._top_size,
            )
            self._add_to_window(held)

        for period in self._mover_periods.values():
            period.add(market, trade, held.arrival)

        window = self._market(market).window
        events.append(TradeAdded(trade, market, window, held.arrival))
        parlay = is_parlay(trade.ticker, self._market(market).meta)
        for alert in self._alert_detector.observe(trade, held.arrival, self._now_ms, parlay=parlay):
            self._keep_alert(alert)
            events.append(AlertRaised(alert, market))
        if not in_window:
            # A client that adds every trade to its window and top list got this one wrong.
            events.append(WindowChanged(market, window))
        for parlays in (False, True):
            if not in_window:
                events.append(TopChanged(self.top_trades(parlays), derivable=False, parlays=parlays))
            elif entered_top[parlays]:
                events.append(TopChanged(self.top_trades(parlays), derivable=True, parlays=parlays))
        for parlays in (False, True):
            if self._hot_members(parlays) != hot_before[parlays]:
                events.append(HotChanged(self.hot(parlays), parlays))
        return events

    def needs_store_check(self, trade: Trade, now_ms: int) -> bool:
        """Whether ``add_trade(trade, now_ms)`` can only tell a duplicate with the store's help:
        the trade is older than the ids remembered, and not too old to be accepted at all."""
        now_ms = max(now_ms, self._now_ms)
        return (
            retention_start_ms(now_ms, self._window_ms)
            <= trade.ts_ms
            < dedup_start_ms(now_ms, self._dedup_horizon_ms)
        )

    def advance(self, now_ms: int) -> list[Event]:
        """Move the clock to ``now_ms``: expire trades that left the window, roll the minute.

        A time earlier than one already passed in changes nothing: state only moves forward.
        The hot events are ranked here (not per trade), when the clock reached a new second since
        they were last ranked: the pipeline advances the clock every second.
        """
        events = self._move_clock(now_ms)
        if now_ms >= self._now_ms >= self._hot_events_due_ms:
            self._rank_events(events)
        return events

    def restore(self, now_ms: int, minutes: Iterable[MinuteSummary], recent: Sequence[Trade]) -> None:
        """Take over the stored trades in bulk, ending in the state of adding them one by one in
        (ts_ms, arrival) order and then advancing to ``now_ms``, at a fraction of the cost.

        ``minutes`` summarise every stored trade, oldest minute first; ``recent`` are whole trades
        in (ts_ms, arrival) order, at least: every trade in the window at ``now_ms``, the latest
        ``tape_size``, and each market's latest ``history_len``. Trades older than the retention
        horizon are left out, as ``add_trade`` refuses them, and of the ids only those of the
        de-duplication horizon are kept. Only for an aggregator that holds no trades yet
        (metadata may be set): it does not announce what it restores.
        """
        if self._trades_total:
            raise RuntimeError(f"restore needs an aggregator without trades; it has {self._trades_total}")
        unannounced: list[Event] = []
        self._move_clock(now_ms)
        retained_from = retention_start_ms(now_ms, self._window_ms)
        ids_from = dedup_start_ms(now_ms, self._dedup_horizon_ms)
        hour_view_start = view_start_ms("hour", now_ms)
        day_view_start = view_start_ms("day", now_ms)
        minute_totals, hour_totals = self._buckets["hour"], self._buckets["day"]
        for minute in minutes:
            if minute.start_ms < retained_from:
                continue
            for ticker in minute.tickers:
                self._market_for(ticker, unannounced)
            if minute.start_ms >= ids_from:
                self._ids_by_minute[minute.start_ms] = list(minute.trade_ids)
                self._seen_ids.update(minute.trade_ids)
            self._trades_total += minute.trades
            if minute.start_ms >= hour_view_start:
                minute_totals[minute.start_ms] = _Totals(
                    minute.usd, minute.trades, minute.contracts, minute.net_flow
                )
            if minute.start_ms >= day_view_start:
                hour = hour_totals.setdefault(floor_to(minute.start_ms, HOUR_MS), _Totals())
                hour.usd += minute.usd
                hour.trades += minute.trades
                hour.contracts += minute.contracts
                hour.net_flow += minute.net_flow
        kept = [trade for trade in recent if trade.ts_ms >= retained_from]
        # The order of adding one by one, but not its numbers: only the order of arrivals is
        # ever compared, and the next trade is still number trades_total.
        first_arrival = self._trades_total - len(kept)
        window_start = now_ms - self._window_ms
        for arrival, trade in enumerate(kept, first_arrival):
            held = _Held(trade, self._market_for(trade.ticker, unannounced), arrival)
            self._tape.add(held)
            self._add_to_history(held)
            if trade.ts_ms > window_start:
                self._add_to_window(held)
            for period in self._mover_periods.values():
                period.add(held.market, trade, arrival)
            parlay = is_parlay(trade.ticker, self._market(held.market).meta)
            self._alert_detector.warm(trade, arrival, now_ms, parlay=parlay)
        self._published_flows = self._ranked_flows(FLOWS_PUBLISHED, include_parlays=False)
        self._published_moves = {
            name: self._ranked_moves(name, MOVERS_PUBLISHED, include_parlays=False) for name in MOVER_WINDOWS
        }
        # Where ``advance(now_ms)`` after adding them one by one would leave the hot events.
        self._rank_events(unannounced)

    def restore_alerts(self, newest_first: Sequence[Alert]) -> None:
        """Take over stored alerts (a restart): kept for reads and snapshots, never raised again."""
        for alert in reversed(newest_first):
            self._keep_alert(alert)

    @property
    def restore_horizon_ms(self) -> int:
        """How far back ``restore`` wants whole trades: the window, the longest mover period and
        twice the accumulation period (a run is judged against the latest time seen)."""
        return max(
            self._window_ms,
            max(MOVER_WINDOWS.values()),
            2 * self._alert_detector.accumulation_ms,
        )

    def set_meta(self, meta: MarketMeta) -> list[Event]:
        """Store a market's metadata; ``MetaChanged`` only when it differs from what is stored."""
        events: list[Event] = []
        market_id = self._market_for(meta.ticker, events)
        market = self._market(market_id)
        if market.meta != meta:
            market.meta = meta
            events.append(MetaChanged(market_id, meta))
            event = event_of(market.ticker, meta)
            if event != market.event:
                self._count_in_events(market_id, -1)
                market.event = event
                self._count_in_events(market_id, 1)
            if is_parlay(market.ticker, meta) != market.parlay:
                self._reclassify(market_id, events)
        return events

    def _count_in_events(self, market_id: int, sign: int) -> None:
        market = self._market(market_id)
        for parlays in (False, True) if not market.parlay else (True,):
            self._event_totals[parlays].shift(market.event, market_id, market.window, sign)

    def _reclassify(self, market_id: int, events: list[Event]) -> None:
        """Its metadata says the market is (or is not) a parlay, which its ticker did not: move it
        into (or out of) the default rankings. Rare, so a pass over the window is fine."""
        market = self._market(market_id)
        top_before, hot_before = self.top_trades(False), self._hot_members(False)
        held_trades = [held for held in self._window_by_time if held.market == market_id]
        if market.window.usd > 0:
            if market.parlay:
                self._ranked_plain.add((-market.window.usd, market.ticker, market_id))
            else:
                self._ranked_plain.remove((-market.window.usd, market.ticker, market_id))
        for held in held_trades:
            if market.parlay:
                self._window_by_size_plain.add(held)
            else:
                self._window_by_size_plain.remove(held)
        self._event_totals[False].shift(market.event, market_id, market.window, 1 if market.parlay else -1)
        market.parlay = not market.parlay
        top_after = self.top_trades(False)
        if top_after != top_before:
            events.append(TopChanged(top_after, derivable=False))
        if self._hot_members(False) != hot_before:
            events.append(HotChanged(self.hot(False)))

    # -- settings (clients are told them, to fold the stream the same way) -------------------

    @property
    def window_ms(self) -> int:
        return self._window_ms

    @property
    def sparkline_len(self) -> int:
        return self._sparkline_len

    @property
    def hot_size(self) -> int:
        return self._hot_size

    @property
    def top_size(self) -> int:
        return self._top_size

    @property
    def tape_size(self) -> int:
        return self._tape_size

    @property
    def market_tape_size(self) -> int:
        return self._market_tape_size

    @property
    def dedup_horizon_ms(self) -> int:
        return self._dedup_horizon_ms

    @property
    def history_len(self) -> int:
        """Latest trades kept per market: its sparkline and its tape are both taken from them."""
        return self._history_len

    # -- reads -------------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """The latest time passed in (0 before any)."""
        return self._now_ms

    @property
    def trades_total(self) -> int:
        """Trades accepted since start."""
        return self._trades_total

    def market_id(self, ticker: str) -> int | None:
        return self._market_ids.get(ticker)

    def ticker(self, market: int) -> str:
        return self._market(market).ticker

    def markets_count(self) -> int:
        """Markets held (the forgotten ones are not)."""
        return len(self._market_ids)

    def market_ids(self) -> list[int]:
        """The ids of the markets held, in first-seen order."""
        return sorted(self._market_ids.values())

    def meta(self, market: int) -> MarketMeta:
        return self._market(market).meta

    def window(self, market: int) -> WindowStats:
        return self._market(market).window

    def sparkline(self, market: int) -> tuple[Trade, ...]:
        """The market's latest ``sparkline_len`` trades, oldest first."""
        return self._market(market).history.oldest_first(self._sparkline_len)

    def last_trade(self, market: int) -> Trade | None:
        """The market's latest trade by (ts, arrival)."""
        return self._market(market).history.latest()

    def hot(self, parlays: bool = False) -> tuple[int, ...]:
        """Hot markets, ranked by (-window usd, ticker); only markets with window usd > 0, and
        parlays only if ``parlays``."""
        ranked = self._ranked if parlays else self._ranked_plain
        return tuple(market for _, _, market in ranked.islice(0, self._hot_size))

    def top_trades(self, parlays: bool = False) -> tuple[Trade, ...]:
        """The largest in-window trades by (-usd, arrival); parlays' trades only if ``parlays``."""
        by_size = self._window_by_size if parlays else self._window_by_size_plain
        return tuple(held.trade for held in by_size.islice(0, self._top_size))

    def hot_events(self, parlays: bool = False) -> tuple[HotEvent, ...]:
        """The hot events as last ranked (at most ``HOT_EVENTS_PERIOD_MS`` ago)."""
        return self._hot_events[parlays]

    def is_parlay(self, market: int) -> bool:
        """Whether the market is a combination market, by its ticker or its metadata."""
        return self._market(market).parlay

    def recent_trades(self, limit: int) -> tuple[Trade, ...]:
        """The tape: up to ``limit`` (at most ``tape_size``) latest trades, newest first."""
        return self._tape.newest_first(limit)

    def market_trades(self, market: int, limit: int) -> tuple[Trade, ...]:
        """Up to ``limit`` (at most ``market_tape_size``) latest trades of a market, newest first."""
        return self._market(market).history.newest_first(min(limit, self._market_tape_size))

    def analytics(self, mode: AnalyticsMode) -> Analytics:
        bucket_ms, bucket_count = ANALYTICS_VIEWS[mode]
        totals = self._buckets[mode]
        first_bucket_ms = view_start_ms(mode, self._now_ms)
        buckets = []
        for index in range(bucket_count):
            bucket = totals.get(first_bucket_ms + index * bucket_ms)
            buckets.append((bucket.usd, bucket.trades) if bucket else (0, 0))
        return Analytics(
            mode=mode,
            bucket_ms=bucket_ms,
            first_bucket_ms=first_bucket_ms,
            buckets=tuple(buckets),
            total_usd=sum(usd for usd, _ in buckets),
            total_trades=sum(trades for _, trades in buckets),
            peak_usd=max(usd for usd, _ in buckets),
            peak_trades=max(trades for _, trades in buckets),
        )

    def today(self) -> tuple[int, int]:
        """(trades, usd) of the trades timed on the UTC date of ``now_ms``."""
        buckets = self._today_buckets()
        return sum(bucket.trades for bucket in buckets), sum(bucket.usd for bucket in buckets)

    def today_flow(self) -> tuple[int, int]:
        """(contracts, net flow) of the trades timed on the UTC date of ``now_ms``, in hundredths;
        net flow is YES takers' contracts minus NO takers'."""
        buckets = self._today_buckets()
        return sum(bucket.contracts for bucket in buckets), sum(bucket.net_flow for bucket in buckets)

    def _today_buckets(self) -> list[_Totals]:
        """The day view's hourly buckets of the UTC date of ``now_ms``."""
        day_start = floor_to(self._now_ms, DAY_MS)
        hours = self._buckets["day"]
        return [hours[hour] for hour in hours.irange(day_start, day_start + DAY_MS, inclusive=(True, False))]

    def active_markets(self) -> int:
        """Markets with at least one trade in the window."""
        return self._active_markets

    # -- reads: trader tools -------------------------------------------------------------------

    @property
    def whale_usd(self) -> int:
        return self._alert_detector.whale_usd

    @property
    def accumulation_usd(self) -> int:
        return self._alert_detector.accumulation_usd

    @property
    def accumulation_ms(self) -> int:
        return self._alert_detector.accumulation_ms

    @property
    def movers_min_usd(self) -> int:
        return self._movers_min_usd

    def alerts(self, since_ms: int = 0, limit: int = ALERTS_KEPT) -> list[Alert]:
        """The latest alerts raised by trades timed at or after ``since_ms``, newest first."""
        newest_first = self._alerts.irange(minimum=(since_ms,), reverse=True)
        return [alert for _, (_, _, alert) in zip(range(limit), newest_first, strict=False)]

    def flows(self, limit: int, *, include_parlays: bool = False) -> tuple[Flow, ...]:
        """The window's flows per market and taker side, largest $ notional first."""
        return self._ranked_flows(limit, include_parlays=include_parlays)

    def movers(self, period: str, limit: int, *, include_parlays: bool = False) -> tuple[Move, ...]:
        """The markets that moved most over ``period`` (a key of MOVER_WINDOWS)."""
        return self._ranked_moves(period, limit, include_parlays=include_parlays)

    def published_flows(self) -> tuple[Flow, ...]:
        """The flow list as subscribed clients were last told it (parlays left out)."""
        return self._published_flows

    def published_moves(self, period: str) -> tuple[Move, ...]:
        return self._published_moves[period]

    def _shown(self, market: int, include_parlays: bool) -> bool:
        return include_parlays or not is_parlay(self._market(market).ticker, self._market(market).meta)

    def _ranked_flows(self, limit: int, *, include_parlays: bool) -> tuple[Flow, ...]:
        flows = [flow for flow in self._flows.all() if self._shown(flow.market, include_parlays)]
        flows.sort(key=lambda flow: flow_key(flow, self._market(flow.market).ticker))
        return tuple(flows[:limit])

    def _ranked_moves(self, period: str, limit: int, *, include_parlays: bool) -> tuple[Move, ...]:
        moves = [
            move
            for move in self._mover_periods[period].moves()
            if move.change != 0
            and move.usd >= self._movers_min_usd
            and self._shown(move.market, include_parlays)
        ]
        moves.sort(key=lambda move: move_key(move, self._market(move.market).ticker))
        return tuple(moves[:limit])

    def _publish_lists(self, events: list[Event]) -> None:
        flows = self._ranked_flows(FLOWS_PUBLISHED, include_parlays=False)
        if flows != self._published_flows:
            self._published_flows = flows
            events.append(FlowsChanged(flows))
        for name in MOVER_WINDOWS:
            moves = self._ranked_moves(name, MOVERS_PUBLISHED, include_parlays=False)
            if moves != self._published_moves[name]:
                self._published_moves[name] = moves
                events.append(MoversChanged(name, moves))

    def _keep_alert(self, alert: Alert) -> None:
        if alert.alert_id in self._alert_ids:
            return
        self._alerts_raised += 1
        self._alerts.add((alert.trade.ts_ms, self._alerts_raised, alert))
        self._alert_ids.add(alert.alert_id)
        if len(self._alerts) > ALERTS_KEPT:
            _, _, dropped = self._alerts.pop(0)
            self._alert_ids.discard(dropped.alert_id)

    def statistics(self) -> AggregatorStatistics:
        return AggregatorStatistics(
            markets=len(self._market_ids),
            trades_in_window=len(self._window_by_time),
            remembered_trade_ids=len(self._seen_ids),
            market_history_trades=self._market_history_trades,
            tape_trades=len(self._tape),
            minute_buckets=len(self._buckets["hour"]),
            hour_buckets=len(self._buckets["day"]),
        )

    # -- internals ---------------------------------------------------------------------------

    def _market(self, market: int) -> _Market:
        held = self._markets[market]
        if held is None:
            raise KeyError(f"market {market} was forgotten")
        return held

    def _market_for(self, ticker: str, events: list[Event]) -> int:
        """The id of ``ticker``, creating it (and announcing it in ``events``) if new."""
        market = self._market_ids.get(ticker)
        if market is None:
            market = len(self._markets)
            self._market_ids[ticker] = market
            meta = MarketMeta(ticker)
            history = _LatestTrades(self._history_len)
            parlay, event = is_parlay(ticker, meta), event_of(ticker, meta)
            self._markets.append(_Market(ticker, meta, history, parlay=parlay, event=event))
            events.append(MarketAdded(market, ticker))
        return market

    def _move_clock(self, now_ms: int) -> list[Event]:
        if self._clock_started and now_ms <= self._now_ms:
            return []
        events: list[Event] = []
        current_minute = floor_to(now_ms, MINUTE_MS)
        if self._clock_started and current_minute != floor_to(self._now_ms, MINUTE_MS):
            events.append(ClockTicked(current_minute))
        self._clock_started = True
        self._now_ms = now_ms
        self._expire(events)
        self._forget_before(retention_start_ms(now_ms, self._window_ms), events)
        self._forget_ids_before(dedup_start_ms(now_ms, self._dedup_horizon_ms))
        for mode, totals in self._buckets.items():
            start_ms = view_start_ms(mode, now_ms)
            while totals and totals.peekitem(0)[0] < start_ms:
                totals.popitem(0)
        for period in self._mover_periods.values():
            period.advance(now_ms)
        self._alert_detector.advance(now_ms)
        if self._lists_period_ms and now_ms >= self._lists_due_ms:
            self._lists_due_ms = floor_to(now_ms, self._lists_period_ms) + self._lists_period_ms
            self._publish_lists(events)
        return events

    def _expire(self, events: list[Event]) -> None:
        """Take out of the window the trades it no longer covers, and say what that changed."""
        oldest_kept_ts = self._now_ms - self._window_ms + 1
        if not self._window_by_time or self._window_by_time[0].trade.ts_ms >= oldest_kept_ts:
            return
        top_before = self.top_trades(False), self.top_trades(True)
        hot_before = self._hot_members(False), self._hot_members(True)
        changed: set[int] = set()
        while self._window_by_time and self._window_by_time[0].trade.ts_ms < oldest_kept_ts:
            held = self._window_by_time.pop(0)
            self._window_by_size.remove(held)
            if not self._market(held.market).parlay:
                self._window_by_size_plain.remove(held)
            self._shift_window(held, -1)
            changed.add(held.market)
        events.extend(WindowChanged(market, self._market(market).window) for market in sorted(changed))
        for parlays in (False, True):
            top_after = self.top_trades(parlays)
            if top_after != top_before[parlays]:
                events.append(TopChanged(top_after, derivable=False, parlays=parlays))
        for parlays in (False, True):
            if self._hot_members(parlays) != hot_before[parlays]:
                events.append(HotChanged(self.hot(parlays), parlays))

    def _rank_events(self, events: list[Event]) -> None:
        """Rank the hot events again; say so where the ranking or its figures changed."""
        self._hot_events_due_ms = floor_to(self._now_ms, HOT_EVENTS_PERIOD_MS) + HOT_EVENTS_PERIOD_MS
        for parlays in (False, True):
            ranked = self._event_totals[parlays].ranked(self._event_member)
            if ranked != self._hot_events[parlays]:
                self._hot_events[parlays] = ranked
                events.append(HotEventsChanged(ranked, parlays))

    def _event_member(self, market_id: int) -> tuple[int, str, int]:
        market = self._market(market_id)
        last = market.history.latest()
        assert last is not None, "a market with trades in the window holds them"
        return market.window.usd, market.ticker, last.yes_price

    def _add_to_window(self, held: _Held) -> None:
        self._window_by_time.add(held)
        self._window_by_size.add(held)
        if not self._market(held.market).parlay:
            self._window_by_size_plain.add(held)
        self._shift_window(held, 1)

    def _shift_window(self, held: _Held, sign: int) -> None:
        market = self._market(held.market)
        before = market.window
        after = _shifted(before, held.trade, sign)
        market.window = after
        self._flows.shift(held.market, held.trade, sign)
        rankings = (self._ranked,) if market.parlay else (self._ranked, self._ranked_plain)
        for ranked in rankings:
            if before.usd > 0:
                ranked.remove((-before.usd, market.ticker, held.market))
            if after.usd > 0:
                ranked.add((-after.usd, market.ticker, held.market))
        for parlays in (False, True) if not market.parlay else (True,):
            totals = self._event_totals[parlays]
            totals.shift(market.event, held.market, before, -1)
            totals.shift(market.event, held.market, after, 1)
        self._active_markets += (after.trades > 0) - (before.trades > 0)

    def _hot_members(self, parlays: bool) -> frozenset[int]:
        return frozenset(self.hot(parlays))

    def _accepts(self, trade: Trade, absent_from_store: bool) -> bool:
        if trade.ts_ms < retention_start_ms(self._now_ms, self._window_ms):
            return False
        if trade.ts_ms < dedup_start_ms(self._now_ms, self._dedup_horizon_ms):
            # Its id may have been forgotten: only the store knows whether it came before.
            return absent_from_store
        return trade.trade_id not in self._seen_ids

    def _remember(self, held: _Held) -> None:
        """Record an accepted trade everywhere but the window: ids, tapes, analytics."""
        trade = held.trade
        minute = floor_to(trade.ts_ms, MINUTE_MS)
        if minute >= dedup_start_ms(self._now_ms, self._dedup_horizon_ms):
            self._seen_ids.add(trade.trade_id)
            ids = self._ids_by_minute.get(minute)
            if ids is None:
                ids = self._ids_by_minute[minute] = []
            ids.append(trade.trade_id)
        self._tape.add(held)
        self._add_to_history(held)
        for mode, totals in self._buckets.items():
            bucket_start = floor_to(trade.ts_ms, ANALYTICS_VIEWS[mode][0])
            bucket = totals.get(bucket_start)
            if bucket is None:
                bucket = totals[bucket_start] = _Totals()
            bucket.usd += trade.usd
            bucket.trades += 1
            bucket.contracts += trade.count
            bucket.net_flow += trade.count if trade.taker_side == "yes" else -trade.count

    def _add_to_history(self, held: _Held) -> None:
        history = self._market(held.market).history
        oldest_before, length_before = history.oldest_ts(), len(history)
        history.add(held)
        self._market_history_trades += len(history) - length_before
        self._reindex_history(held.market, oldest_before, history.oldest_ts())

    def _reindex_history(self, market: int, oldest_before: int | None, oldest_after: int | None) -> None:
        if oldest_before == oldest_after:
            return
        if oldest_before is not None:
            self._histories_by_oldest.remove((oldest_before, market))
        if oldest_after is not None:
            self._histories_by_oldest.add((oldest_after, market))

    def _forget_before(self, start_ms: int, events: list[Event]) -> None:
        """Take the trades older than ``start_ms`` off the tape and the market histories, and
        forget the markets left without any (the window is inside the retention horizon, so
        theirs is empty too; hot and top hold none of them). The hot events, ranked once a
        second, may still name one when the clock jumped (a fast replay): they are ranked again."""
        forgotten: set[int] = set()
        while self._histories_by_oldest and self._histories_by_oldest[0][0] < start_ms:
            oldest_before, market = self._histories_by_oldest[0]
            held = self._market(market)
            history = held.history
            length_before = len(history)
            history.drop_older_than(start_ms)
            self._market_history_trades += len(history) - length_before
            self._reindex_history(market, oldest_before, history.oldest_ts())
            if not history and not held.window.trades:
                self._markets[market] = None
                del self._market_ids[held.ticker]
                events.append(MarketForgotten(market, held.ticker))
                forgotten.add(market)
        self._tape.drop_older_than(start_ms)
        if forgotten and any(
            member.market in forgotten
            for ranked in self._hot_events.values()
            for event in ranked
            for member in event.markets
        ):
            self._rank_events(events)

    def _forget_ids_before(self, start_ms: int) -> None:
        while self._ids_by_minute and self._ids_by_minute.peekitem(0)[0] < start_ms:
            _, ids = self._ids_by_minute.popitem(0)
            self._seen_ids.difference_update(ids)

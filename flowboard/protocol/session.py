"""What one client still needs: the per-client half of protocol v2, as a pure state machine.

The publisher ``offer``s every event to every session (cheap: it only records what became
stale); the client's send loop asks ``build_frame`` for everything pending in one frame.
Because keyed state (windows, hot set, top trades, analytics, metadata) is only *marked*
dirty and read from the aggregator when the frame is built, a client that falls behind gets
each key once, at its latest value (conflation), while its trades are batched in order.
A frame is therefore always exactly "the server's state as of ``seq``" for this client.

The session mirrors what the client holds (which markets it tracks, which ids it knows,
the time base of its trade deltas) so that it never sends what the client can derive.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import attrs

from flowboard.aggregate.aggregator import ANALYTICS_VIEWS, Aggregator, AnalyticsMode, floor_to
from flowboard.aggregate.alerts import Alert
from flowboard.aggregate.events import (
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
)
from flowboard.aggregate.movers import MOVER_WINDOWS
from flowboard.model import HOUR_MS, MINUTE_MS, Trade
from flowboard.options import flag, positive
from flowboard.protocol import v2

#: The hello's ``t0`` is the aggregator's clock floored to this grid, so that clients that
#: connect within the same hour share a time base (and can share frames: see ``group_signature``).
T0_GRID_MS = HOUR_MS

#: Channels whose updates a client that does not fold trades gets on a cadence (a deadline of
#: its own): such a client cannot share a group's frames.
_CADENCED = frozenset({"hour", "day", "today"})


#: What a frame carries, for metrics: a snapshot, trades (with whatever state came along),
#: or state updates alone.
FRAME_KINDS = ("snapshot", "trades", "state")


class Frame(NamedTuple):
    """One frame's encoded payload and its kind (one of ``FRAME_KINDS``)."""

    payload: bytes
    kind: str


@attrs.frozen
class SessionLimits:
    """Bounds and sizes of one client's stream (defaults carry their units in the name)."""

    # Past this the client is resynced from a snapshot.
    max_pending_trades: int = flag(
        2_000, "--max-pending-trades", "per client, before a resync", int, validator=positive
    )
    # More resyncs than this within resync_period_ms -> closed (4008).
    max_resyncs: int = flag(
        3, "--max-resyncs", "per client per minute, before closing it (4008)", int, validator=positive
    )
    resync_period_ms: int = 60_000
    snapshot_tape: int = 50  # trades in the snapshot's tape
    detail_trades: int = 50  # trades sent when a market's detail opens
    snapshot_alerts: int = 50  # alerts in the `alerts` channel's snapshot
    # Clients that do not fold trades get analytics/today updates at an adaptive cadence:
    # every analytics_busy_ms when trades flow fast, every analytics_quiet_ms when slow.
    analytics_busy_ms: int = 250
    analytics_quiet_ms: int = 2_000
    busy_trades_per_s: float = 20.0


@attrs.frozen
class SessionStats:
    frames: int
    trades_sent: int
    batched_frames: int  # frames that carried more than one trade
    conflated: int  # keyed updates absorbed into a later value before being sent
    resyncs: int
    missed_trades: int


@attrs.frozen
class ResumePoint:
    """What the client held at the sequence it resumes from: the hot set then (of the ranking
    its ``parlays`` option chose)."""

    hot: tuple[int, ...]


class ClientSession:
    """One client's subscription, its pending changes, and a mirror of what it holds."""

    def __init__(
        self,
        *,
        epoch: str,
        channels: frozenset[str],
        detail: str | None,
        limits: SessionLimits,
        seq: int,
        resume: ResumePoint | None = None,
        parlays: bool = False,
        watch: tuple[str, ...] = (),
    ) -> None:
        self.epoch = epoch
        self.limits = limits
        # What the client asked for.
        self.channels = channels
        self._wanted_detail = detail
        # Whether its rankings (hot, top, hot events) include parlays.
        self.parlays = parlays
        # The markets it pins, by ticker, in its order (known or not yet traded).
        self._watch = watch
        # The sequence number of the latest event offered; frames carry it.
        self.seq = seq
        # Mirror of the client: market ids it knows, markets whose window/sparkline it holds,
        # the hot set it was last told, its detail market, the time base of its trade deltas.
        self._known: set[int] = set()
        self._tracked: set[int] = set()
        self._hot_sent: frozenset[int] = frozenset()
        self._detail: int | None = None
        # The watched markets it was last told (`W`), and markets whose metadata (`i`) it holds
        # without tracking them (named in the hot events).
        self._watched: tuple[int, ...] = ()
        self._described: set[int] = set()
        self._t0 = 0
        self._last_trade_ts = 0
        # Pending changes since the last frame.
        self._needs_snapshot = resume is None
        self._resumed = resume is not None
        # Whether this connection continues an earlier one (for metrics).
        self.is_resume = resume is not None
        self._pending_trades: list[TradeAdded] = []
        self._dirty_windows: set[int] = set()
        self._spark_inserts: dict[int, list[Trade]] = {}
        self._dirty_meta: set[int] = set()
        self._dirty_buckets: dict[AnalyticsMode, set[int]] = {mode: set() for mode in ANALYTICS_VIEWS}
        self._hot_dirty = False
        self._top_dirty = False
        self._today_dirty = False
        self._clock_dirty = False
        self._detail_dirty = False
        self._watch_dirty = watch != ()
        self._events_dirty = False
        self._parlays_dirty = False
        self._added_channels: frozenset[str] = frozenset()
        self._channels_dirty = False
        self._errors: list[str] = []
        # Trader tools: alerts raised since the last frame; lists changed since (conflated).
        self._pending_alerts: list[AlertRaised] = []
        self._flows_dirty = False
        self._movers_dirty: set[str] = set()
        self._missed = 0
        self._last_analytics_ms = 0
        self._recent_trade_times: list[int] = []
        self._resync_times: list[int] = []
        # Why this client must be closed (code 4008), once it is hopeless.
        self.close_reason: str | None = None
        # Counters for /metrics.
        self._frames = 0
        self._trades_sent = 0
        self._batched_frames = 0
        self._conflated = 0
        self._resyncs = 0
        self._missed_total = 0
        if resume is not None:
            self._tracked = set(resume.hot) if "hot" in channels else set()
            self._hot_sent = frozenset(self._tracked)
            self._detail_dirty = detail is not None

    # -- what the client folds by itself ------------------------------------------------

    @property
    def _folds_trades(self) -> bool:
        return "trades" in self.channels

    def _derives(self, market: int) -> bool:
        """Whether the client keeps this market's window/sparkline from the trades it gets."""
        return self._folds_trades or market == self._detail

    # -- input: events from the publisher ------------------------------------------------

    def offer(self, seq: int, event: Event, now_ms: int) -> None:
        """Record that ``event`` (number ``seq``) happened. Never blocks, never encodes."""
        self.seq = seq
        if self._needs_snapshot:
            # Everything is read afresh when the snapshot is built; only count what is skipped.
            if isinstance(event, TradeAdded):
                self._missed += 1
            return
        if isinstance(event, TradeAdded):
            self._offer_trade(event, now_ms)
        elif isinstance(event, WindowChanged):
            self._mark_window(event.market)
        elif isinstance(event, HotChanged):
            self._hot_dirty |= event.parlays == self.parlays
        elif isinstance(event, TopChanged):
            if (
                "top" in self.channels
                and event.parlays == self.parlays
                and not (event.derivable and self._folds_trades)
            ):
                self._conflated += self._top_dirty
                self._top_dirty = True
        elif isinstance(event, MetaChanged):
            self._dirty_meta.add(event.market)
        elif isinstance(event, HotEventsChanged):
            if "events" in self.channels and event.parlays == self.parlays:
                self._conflated += self._events_dirty
                self._events_dirty = True
        elif isinstance(event, MarketAdded):
            self._watch_dirty |= event.ticker in self._watch
        elif isinstance(event, ClockTicked) and self.channels & {"hour", "day", "today"}:
            self._clock_dirty = True
        elif isinstance(event, AlertRaised) and "alerts" in self.channels:
            self._pending_alerts.append(event)
        elif isinstance(event, FlowsChanged) and "flows" in self.channels:
            self._conflated += self._flows_dirty
            self._flows_dirty = True
        elif isinstance(event, MoversChanged) and "movers" in self.channels:
            self._conflated += event.period in self._movers_dirty
            self._movers_dirty.add(event.period)
        elif isinstance(event, MarketForgotten):
            self._forget(event)

    def _forget(self, event: MarketForgotten) -> None:
        """A market quiet for a day left the aggregator: what this client held of it is stale
        (its id is never used again), so the mirror lets go of it too."""
        market = event.market
        self._known.discard(market)
        self._tracked.discard(market)
        self._dirty_windows.discard(market)
        self._dirty_meta.discard(market)
        self._spark_inserts.pop(market, None)
        self._described.discard(market)
        if market in self._watched:
            # The ticker stays watched: if it trades again, it comes back under a new id.
            self._watched = tuple(watched for watched in self._watched if watched != market)
            self._watch_dirty = True
        if market == self._detail:
            self._errors.append(f"market {event.ticker[:80]!r} had no trade for a day: its detail is closed")
            self._wanted_detail = None
            self._detail = None
            self._detail_dirty = True

    def _mark_window(self, market: int) -> None:
        if market in self._dirty_windows:
            self._conflated += 1
        else:
            self._dirty_windows.add(market)

    def _offer_trade(self, event: TradeAdded, now_ms: int) -> None:
        market = event.market
        if self._folds_trades or market == self._detail:
            self._pending_trades.append(event)
            if len(self._pending_trades) > self.limits.max_pending_trades:
                self._start_resync(now_ms)
                return
        if market in self._tracked and not self._derives(market):
            self._mark_window(market)
            self._spark_inserts.setdefault(market, []).append(event.trade)
        if not self._folds_trades:
            ts = event.trade.ts_ms
            self._recent_trade_times.append(now_ms)
            for mode, (bucket_ms, _) in ANALYTICS_VIEWS.items():
                if mode in self.channels:
                    self._dirty_buckets[mode].add(floor_to(ts, bucket_ms))
            if "today" in self.channels:
                self._today_dirty = True

    def _start_resync(self, now_ms: int) -> None:
        self._missed += len(self._pending_trades)
        self._needs_snapshot = True
        self._resync_times = [t for t in self._resync_times if t > now_ms - self.limits.resync_period_ms]
        self._resync_times.append(now_ms)
        self._resyncs += 1
        if len(self._resync_times) > self.limits.max_resyncs:
            self.close_reason = (
                f"too slow: needed {len(self._resync_times)} resyncs within "
                f"{self.limits.resync_period_ms // 1000} s (limit {self.limits.max_resyncs})"
            )
        self._clear_pending()

    def restart(self, *, epoch: str, seq: int) -> None:
        """The publisher replaced its history (an edge reloaded the ingest's snapshot): the next
        frame is a hello (not resumed) with a fresh snapshot, and ``seq`` goes on from ``seq``.
        Not counted as a resync: the client did nothing wrong."""
        self.epoch = epoch
        self.seq = seq
        self._needs_snapshot = True
        self._resumed = False
        self._clear_pending()

    def _clear_pending(self) -> None:
        self._pending_trades = []
        self._dirty_windows.clear()
        self._spark_inserts.clear()
        self._dirty_meta.clear()
        for buckets in self._dirty_buckets.values():
            buckets.clear()
        self._hot_dirty = self._top_dirty = self._today_dirty = self._clock_dirty = False
        self._detail_dirty = self._watch_dirty = self._events_dirty = self._parlays_dirty = False
        self._added_channels = frozenset()
        self._channels_dirty = False
        self._pending_alerts = []
        self._flows_dirty = False
        self._movers_dirty = set()

    # -- input: commands from the client -------------------------------------------------

    def subscribe(self, channels: frozenset[str]) -> None:
        added = channels - self.channels
        self.channels = self.channels | channels
        self._added_channels |= added
        self._channels_dirty = True
        if "hot" in added:
            self._hot_dirty = True

    def unsubscribe(self, channels: frozenset[str]) -> None:
        removed = channels & self.channels
        self.channels = self.channels - channels
        self._added_channels -= channels
        self._channels_dirty = True
        if "hot" in removed:
            self._hot_dirty = True  # an empty `k` tells the client to drop the hot markets
        if "alerts" in removed:
            self._pending_alerts = []
        if "flows" in removed:
            self._flows_dirty = False
        if "movers" in removed:
            self._movers_dirty = set()

    def set_detail(self, ticker: str | None) -> None:
        self._wanted_detail = ticker
        self._detail_dirty = True

    def watch(self, tickers: tuple[str, ...]) -> None:
        """Pin these markets (replacing the list): they are tracked like hot ones from now on."""
        self._watch = tickers
        self._watch_dirty = True

    def set_parlays(self, on: bool) -> None:
        """Rank with parlays or without from now on: the client is told (`P`) and gets the
        rankings it subscribes to afresh."""
        self.parlays = on
        self._parlays_dirty = True
        self._hot_dirty = True
        self._top_dirty = "top" in self.channels
        self._events_dirty = "events" in self.channels

    def report_error(self, message: str) -> None:
        self._errors.append(message)

    @property
    def pending_trades(self) -> int:
        return len(self._pending_trades)

    # -- sharing: groups of clients with identical mirrors --------------------------------

    def group_signature(self) -> tuple[Any, ...] | None:
        """What another session must match for both clients to be sent the same frames from
        now on, or None while this one cannot share (something pending, a detail market, an
        error to report, analytics on a cadence of its own). Market ids the client knows are
        not part of it: a group re-defines (``m``) any the member might not know."""
        if (
            self._needs_snapshot
            or self._resumed
            or self.close_reason is not None
            or self._detail is not None
            or self._wanted_detail is not None
            or self._missed
            or self.next_deadline() is not None
            or self.has_pending(0)
            or (not self._folds_trades and self.channels & _CADENCED)
        ):
            return None
        return (
            self.epoch,
            self.seq,
            self.channels,
            self._t0,
            self._last_trade_ts,
            self._hot_sent,
            frozenset(self._tracked),
            self.parlays,
            self._watch,
            self._watched,
            frozenset(self._described),
        )

    def forget_ids_unknown_to(self, other: ClientSession) -> None:
        """A client with ``other``'s mirror joins the clients this session speaks for: from now
        on define every market id that client might not know yet."""
        self._known &= other._known

    def fork(self) -> ClientSession:
        """An independent copy of this session (a client leaving a group goes on from it)."""
        twin = copy.copy(self)
        twin._known = set(self._known)
        twin._tracked = set(self._tracked)
        twin._described = set(self._described)
        twin._pending_trades = list(self._pending_trades)
        twin._dirty_windows = set(self._dirty_windows)
        twin._spark_inserts = {market: list(trades) for market, trades in self._spark_inserts.items()}
        twin._dirty_meta = set(self._dirty_meta)
        twin._dirty_buckets = {mode: set(starts) for mode, starts in self._dirty_buckets.items()}
        twin._errors = list(self._errors)
        twin._pending_alerts = list(self._pending_alerts)
        twin._movers_dirty = set(self._movers_dirty)
        twin._recent_trade_times = list(self._recent_trade_times)
        twin._resync_times = list(self._resync_times)
        return twin

    # -- output: frames --------------------------------------------------------------------

    def has_pending(self, now_ms: int) -> bool:
        """Whether ``build_frame(now_ms)`` would produce a frame."""
        return bool(
            self._needs_snapshot
            or self._resumed
            or self._pending_trades
            or self._dirty_windows
            or self._spark_inserts
            or self._dirty_meta
            or self._hot_dirty
            or self._top_dirty
            or self._clock_dirty
            or self._detail_dirty
            or self._watch_dirty
            or self._events_dirty
            or self._parlays_dirty
            or self._added_channels
            or self._channels_dirty
            or self._errors
            or self._pending_alerts
            or self._flows_dirty
            or self._movers_dirty
            or self._analytics_due(now_ms)
        )

    def next_deadline(self) -> int | None:
        """When pending analytics become due (ms), if any are held back by the cadence."""
        if self._today_dirty or any(self._dirty_buckets.values()):
            return self._last_analytics_ms + self._analytics_interval()
        return None

    def _analytics_interval(self) -> int:
        horizon = 1_000
        recent = self._recent_trade_times
        if recent and recent[-1] - recent[0] > horizon:
            cutoff = recent[-1] - horizon
            self._recent_trade_times = recent = [t for t in recent if t > cutoff]
        per_s = len(recent) * 1_000 / horizon
        if per_s >= self.limits.busy_trades_per_s:
            return self.limits.analytics_busy_ms
        # Between quiet and busy, shrink the interval in proportion to the trade rate.
        span = self.limits.analytics_quiet_ms - self.limits.analytics_busy_ms
        return int(self.limits.analytics_quiet_ms - span * per_s / self.limits.busy_trades_per_s)

    def _analytics_due(self, now_ms: int) -> bool:
        deadline = self.next_deadline()
        return deadline is not None and now_ms >= deadline

    def build_frame(self, agg: Aggregator, now_ms: int) -> Frame | None:
        """Everything pending, as one frame, or None when there is nothing to send."""
        if self._needs_snapshot:
            frame = self._snapshot_frame(agg)
            kind = "snapshot"
        else:
            if not self.has_pending(now_ms):
                return None
            kind = "trades" if self._pending_trades else "state"
            frame = self._update_frame(agg, now_ms)
        self._frames += 1
        return Frame(v2.dumps(frame), kind)

    def statistics(self) -> SessionStats:
        return SessionStats(
            frames=self._frames,
            trades_sent=self._trades_sent,
            batched_frames=self._batched_frames,
            conflated=self._conflated,
            resyncs=self._resyncs,
            missed_trades=self._missed_total,
        )

    # -- frame builders --------------------------------------------------------------------

    def _hello(self, agg: Aggregator, *, resumed: bool) -> list[Any]:
        self._t0 = agg.now_ms - agg.now_ms % T0_GRID_MS
        self._last_trade_ts = self._t0
        return [
            "H",
            {
                "v": v2.VERSION,
                "epoch": self.epoch,
                "t0": self._t0,
                "units": v2.UNITS,
                "window_ms": agg.window_ms,
                "spark": agg.sparkline_len,
                "hot": agg.hot_size,
                "top": agg.top_size,
                "ch": sorted(self.channels),
                "detail": self._wanted_detail,
                "parlays": self.parlays,
                "resumed": resumed,
            },
        ]

    def _clock_event(self, agg: Aggregator) -> list[Any]:
        """``c``: the aggregator's current minute, relative to t0."""
        return ["c", agg.now_ms - agg.now_ms % MINUTE_MS - self._t0]

    def _define(self, agg: Aggregator, market: int, out: list[Any]) -> None:
        if market not in self._known:
            self._known.add(market)
            out.append(_market_definition(agg, market))

    def _market_state(self, agg: Aggregator, market: int, defs: list[Any], out: list[Any]) -> None:
        """Everything a client needs to start tracking ``market``."""
        self._define(agg, market, defs)
        meta = agg.meta(market)
        close = None if meta.close_ts_ms is None else meta.close_ts_ms - self._t0
        window = agg.window(market)
        out.append(["i", market, meta.title, close])
        out.append(
            ["w", market, window.contracts, window.usd, window.trades, window.yes_flow, window.no_flow]
        )
        out.append(["s", market, 0, *(v2.trade_point(t, self._t0) for t in agg.sparkline(market))])

    def _rows(self, agg: Aggregator, trades: tuple[Trade, ...], defs: list[Any]) -> list[list[int]]:
        rows = []
        for trade in trades:
            market = agg.market_id(trade.ticker)
            assert market is not None, "a stored trade always has a market id"
            self._define(agg, market, defs)
            rows.append(v2.trade_row(market, trade, self._t0))
        return rows

    def _analytics_event(self, agg: Aggregator, mode: AnalyticsMode) -> list[Any]:
        view = agg.analytics(mode)
        return ["a", v2.MODE_CODES[mode], view.first_bucket_ms - self._t0, *map(list, view.buckets)]

    def _hot_events_event(self, agg: Aggregator, defs: list[Any], out: list[Any]) -> None:
        """``E``: the hot events, each with its busiest markets (defined, and described once)."""
        self._events_dirty = False
        ranked: list[Any] = ["E"]
        described: list[Any] = []
        for event in agg.hot_events(self.parlays):
            row: list[Any] = [
                event.event_ticker,
                event.usd,
                event.trades,
                event.contracts,
                event.market_count,
            ]
            for member in event.markets:
                self._define(agg, member.market, defs)
                if member.market not in self._described and member.market not in self._tracked:
                    self._described.add(member.market)
                    described.append(self._info_event(agg, member.market))
                row.append([member.market, member.usd, member.last_price])
            ranked.append(row)
        out.extend(described)
        out.append(ranked)

    def _info_event(self, agg: Aggregator, market: int) -> list[Any]:
        meta = agg.meta(market)
        close = None if meta.close_ts_ms is None else meta.close_ts_ms - self._t0
        return ["i", market, meta.title, close]

    def _watch_parts(self, agg: Aggregator, defs: list[Any]) -> list[Any]:
        """``W``: the watched markets that have traded, in the client's order."""
        self._watch_dirty = False
        ids = [agg.market_id(ticker) for ticker in self._watch]
        self._watched = tuple(market for market in ids if market is not None)
        for market in self._watched:
            self._define(agg, market, defs)
        return ["W", *self._watched]

    def _channel_parts(self, agg: Aggregator, channels: frozenset[str], defs: list[Any]) -> list[Any]:
        """The current state of ``channels`` (a snapshot, or what a new subscription needs)."""
        parts: list[Any] = []
        if "hot" in channels:
            hot = agg.hot(self.parlays)
            parts.append(["k", *hot])
            self._hot_sent = frozenset(hot)
            for market in hot:
                if market not in self._tracked:
                    self._market_state(agg, market, defs, parts)
                    self._tracked.add(market)
        if "top" in channels:
            parts.append(["x", *self._rows(agg, agg.top_trades(self.parlays), defs)])
        if "events" in channels:
            self._hot_events_event(agg, defs, parts)
        for mode in ANALYTICS_VIEWS:
            if mode in channels:
                parts.append(self._analytics_event(agg, mode))
        if "today" in channels:
            parts.append(["d", *agg.today()])
        if "trades" in channels:
            parts.append(["T", *self._rows(agg, agg.recent_trades(self.limits.snapshot_tape), defs)])
        if "alerts" in channels:
            alerts = agg.alerts(limit=self.limits.snapshot_alerts)
            parts.append(["A", 0, *self._alert_rows(agg, alerts, defs)])
        if "flows" in channels:
            parts.append(self._flows_event(agg, defs))
        if "movers" in channels:
            parts.extend(self._movers_event(agg, period, defs) for period in MOVER_WINDOWS)
        return parts

    def _alert_rows(self, agg: Aggregator, alerts: list[Alert], defs: list[Any]) -> list[list[int]]:
        rows = []
        for alert in alerts:
            market = agg.market_id(alert.trade.ticker)
            if market is None:
                # A restored alert of a market not traded today, or one forgotten since: the
                # wire has no id for it (GET /api/alerts still lists it by ticker).
                continue
            self._define(agg, market, defs)
            rows.append(v2.alert_row(market, alert, self._t0))
        return rows

    def _flows_event(self, agg: Aggregator, defs: list[Any]) -> list[Any]:
        flows = agg.published_flows()
        for flow in flows:
            self._define(agg, flow.market, defs)
        return ["F", *map(v2.flow_row, flows)]

    def _movers_event(self, agg: Aggregator, period: str, defs: list[Any]) -> list[Any]:
        moves = agg.published_moves(period)
        for move in moves:
            self._define(agg, move.market, defs)
        return ["M", period, *map(v2.move_row, moves)]

    def _snapshot_frame(self, agg: Aggregator) -> list[Any]:
        frame: list[Any] = [self.seq]
        if self._missed:
            frame.append(["r", self._missed])
            self._missed_total += self._missed
            self._missed = 0
        frame.append(self._hello(agg, resumed=False))
        self._known.clear()
        self._tracked.clear()
        self._described.clear()
        self._hot_sent = frozenset()
        self._watched = tuple[int, ...]()
        self._detail = None
        self._needs_snapshot = False
        self._resumed = False
        self._clear_pending()
        self._last_analytics_ms = 0
        defs: list[Any] = []
        parts = self._channel_parts(agg, self.channels, defs)
        if self._watch:
            parts.append(self._watch_parts(agg, defs))
            for watched in self._watched:
                if watched not in self._tracked:
                    self._market_state(agg, watched, defs, parts)
                    self._tracked.add(watched)
        detail_parts = self._detail_parts(agg, defs) if self._wanted_detail is not None else []
        frame.extend(defs)
        if agg.now_ms - agg.now_ms % MINUTE_MS != self._t0:
            # t0 is on the hour grid; the client's current minute would start there.
            frame.append(self._clock_event(agg))
        frame.extend(parts)
        frame.extend(detail_parts)
        return frame

    def _detail_parts(self, agg: Aggregator, defs: list[Any]) -> list[Any]:
        """Switch the client's detail market to the wanted one (its full state, or null)."""
        self._detail_dirty = False
        wanted = None if self._wanted_detail is None else agg.market_id(self._wanted_detail)
        parts: list[Any] = []
        if self._wanted_detail is not None and wanted is None:
            self._errors.append(f"unknown market {self._wanted_detail[:80]!r}: no trade seen for it yet")
            self._wanted_detail = None
        previous = self._detail
        self._detail = wanted
        if (
            previous is not None
            and previous != wanted
            and previous not in self._hot_sent
            and previous not in self._watched
        ):
            self._tracked.discard(previous)
        if wanted is None:
            return [["D", None]]
        if wanted not in self._tracked:
            self._market_state(agg, wanted, defs, parts)
            self._tracked.add(wanted)
        trades = agg.market_trades(wanted, self.limits.detail_trades)
        parts.append(["D", wanted, *self._rows(agg, trades, defs)])
        return parts

    def _update_frame(self, agg: Aggregator, now_ms: int) -> list[Any]:
        frame: list[Any] = [self.seq]
        # A resumed hello moves t0 (back to the grid): the client's minute comes from `c`.
        resumed_clock = self._resumed
        if self._resumed:
            frame.append(self._hello(agg, resumed=True))
            self._resumed = False
        defs: list[Any] = []
        head: list[Any] = []
        keyed: list[Any] = []

        if self._clock_dirty or resumed_clock:
            head.append(self._clock_event(agg))
        if self._clock_dirty:
            self._clock_dirty = False
            if not self._folds_trades:
                # The new period may already hold trades timed ahead of our clock: send whole views.
                for mode in ANALYTICS_VIEWS:
                    if mode in self.channels:
                        keyed.append(self._analytics_event(agg, mode))
                        self._dirty_buckets[mode].clear()
                if "today" in self.channels:
                    keyed.append(["d", *agg.today()])
                    self._today_dirty = False

        if self._pending_trades:
            trades: list[Any] = ["t"]
            for event in self._pending_trades:
                self._define(agg, event.market, defs)
                trade = event.trade
                trades.append(
                    [
                        event.market,
                        trade.yes_price,
                        trade.count,
                        v2.side_code(trade),
                        trade.ts_ms - self._last_trade_ts,
                    ]
                )
                self._last_trade_ts = trade.ts_ms
            head.append(trades)
            self._trades_sent += len(self._pending_trades)
            if len(self._pending_trades) > 1:
                self._batched_frames += 1
            self._pending_trades = []

        if self._channels_dirty:
            # After the trades (folded under the old channels), before the state for the new ones.
            head.append(["C", *sorted(self.channels)])
            self._channels_dirty = False
        if self._parlays_dirty:
            # Likewise: the trades before it were folded into the top trades under the old option.
            head.append(["P", int(self.parlays)])
            self._parlays_dirty = False

        if self._watch_dirty:
            keyed.append(self._watch_parts(agg, defs))

        # Markets the client must hold from now on: the hot set, the watched and the detail market.
        hot = agg.hot(self.parlays) if "hot" in self.channels else ()
        if self._hot_dirty or "hot" in self._added_channels:
            self._hot_dirty = False
            if frozenset(hot) != self._hot_sent or "hot" in self._added_channels:
                keyed.append(["k", *hot])
                self._hot_sent = frozenset(hot)
        wanted_tracked = set(self._hot_sent)
        wanted_tracked.update(self._watched)
        if self._detail is not None:
            wanted_tracked.add(self._detail)
        entering = wanted_tracked - self._tracked
        self._tracked &= wanted_tracked
        for market in sorted(entering):
            self._market_state(agg, market, defs, keyed)
            self._tracked.add(market)

        for market in sorted(self._dirty_meta):
            if market in self._known:
                defs.append(_market_definition(agg, market))
            if (market in self._tracked and market not in entering) or market in self._described:
                keyed.append(self._info_event(agg, market))
        self._dirty_meta.clear()

        for market in sorted(self._dirty_windows):
            if market in self._tracked and market not in entering:
                window = agg.window(market)
                keyed.append(
                    [
                        "w",
                        market,
                        window.contracts,
                        window.usd,
                        window.trades,
                        window.yes_flow,
                        window.no_flow,
                    ]
                )
        self._dirty_windows.clear()

        for market, inserted in sorted(self._spark_inserts.items()):
            if market in self._tracked and market not in entering:
                if len(inserted) >= agg.sparkline_len:
                    points = agg.sparkline(market)
                    keyed.append(["s", market, 0, *(v2.trade_point(t, self._t0) for t in points)])
                else:
                    keyed.append(["s", market, 1, *(v2.trade_point(t, self._t0) for t in inserted)])
        self._spark_inserts.clear()

        if self._top_dirty:
            keyed.append(["x", *self._rows(agg, agg.top_trades(self.parlays), defs)])
            self._top_dirty = False

        if self._events_dirty and "events" not in self._added_channels:
            if "events" in self.channels:
                self._hot_events_event(agg, defs, keyed)
            self._events_dirty = False
        # A channel subscribed in this frame gets its whole state below, which includes these.
        if self._pending_alerts and "alerts" not in self._added_channels:
            alerts = [event.alert for event in self._pending_alerts]
            keyed.append(["A", 1, *self._alert_rows(agg, alerts, defs)])
        self._pending_alerts = []
        if self._flows_dirty and "flows" not in self._added_channels:
            keyed.append(self._flows_event(agg, defs))
        self._flows_dirty = False
        if "movers" not in self._added_channels:
            keyed.extend(self._movers_event(agg, period, defs) for period in sorted(self._movers_dirty))
        self._movers_dirty = set()

        if self._added_channels:
            keyed.extend(self._channel_parts(agg, self._added_channels - {"hot"}, defs))
            self._added_channels = frozenset()

        if self._analytics_due(now_ms):
            keyed.extend(self._analytics_updates(agg))
            self._last_analytics_ms = now_ms

        if self._detail_dirty:
            keyed.extend(self._detail_parts(agg, defs))

        frame.extend(defs)
        frame.extend(head)
        frame.extend(keyed)
        frame.extend(["e", message] for message in self._errors)
        self._errors = []
        return frame

    def _analytics_updates(self, agg: Aggregator) -> list[Any]:
        updates: list[Any] = []
        for mode, dirty in self._dirty_buckets.items():
            if not dirty:
                continue
            view = agg.analytics(mode)
            for start in sorted(dirty):
                index = (start - view.first_bucket_ms) // view.bucket_ms
                if 0 <= index < len(view.buckets):
                    usd, count = view.buckets[index]
                    updates.append(["p", v2.MODE_CODES[mode], start - self._t0, usd, count])
            dirty.clear()
        if self._today_dirty:
            updates.append(["d", *agg.today()])
            self._today_dirty = False
        return updates


def _market_definition(agg: Aggregator, market: int) -> list[Any]:
    """``m``: ticker and category, and a 1 after them for a parlay (the client leaves its trades
    out of the top trades unless it asked for parlays)."""
    meta = agg.meta(market)
    if agg.is_parlay(market):
        return ["m", market, meta.ticker, meta.category, 1]
    return ["m", market, meta.ticker, meta.category]


__all__ = ["ClientSession", "ResumePoint", "SessionLimits", "SessionStats"]

"""The reference v2 decoder: folds frames into the view a client shows.

Tests, the benchmark and the browser (web/decoder.js, checked against the same vectors)
all fold the stream with these rules, so "the client's view equals the server's state"
is something we can assert: compare ``ViewState.summary()`` with ``expected_summary()``.
"""

from __future__ import annotations

import bisect
from typing import Any

import attrs
import orjson

from flowboard.aggregate.aggregator import ANALYTICS_VIEWS, Aggregator, AnalyticsMode, floor_to, view_start_ms
from flowboard.aggregate.movers import MOVER_WINDOWS
from flowboard.errors import DecodeError
from flowboard.model import DAY_MS, MINUTE_MS, ONE_DOLLAR, Trade
from flowboard.protocol import v2

# A trade as the client holds it: (market, price, count, side, ts_ms).
Row = tuple[int, int, int, int, int]


@attrs.define
class MarketView:
    ticker: str
    category: str = ""
    parlay: bool = False
    title: str = ""
    close_ms: int | None = None
    window: list[int] | None = None  # [contracts, usd, trades, yes_flow, no_flow]
    # Sparkline as (ts, arrival, price, count, side); arrival breaks ties like the server.
    spark: list[tuple[int, int, int, int, int]] = attrs.Factory(list)


def trade_usd(price: int, count: int, side: int, one_dollar: int = ONE_DOLLAR) -> int:
    """count x the taker's price; ``one_dollar`` is $1 in the hello's price units."""
    return count * (price if side else one_dollar - price)


@attrs.define
class ViewState:
    """Everything a v2 client knows, folded from frames in order."""

    tape_limit: int = 200
    detail_limit: int = 50
    alerts_limit: int = 50
    seq: int = -1
    epoch: str = ""
    t0: int = 0
    channels: frozenset[str] = frozenset()
    window_ms: int = 600_000
    spark_len: int = 20
    top_len: int = 10
    one_dollar: int = ONE_DOLLAR  # $1 in the price units the hello declared
    markets: dict[int, MarketView] = attrs.Factory(dict)
    hot: list[int] = attrs.Factory(list)
    detail: int | None = None
    parlays: bool = False  # whether its rankings include parlays (else their trades skip the top)
    watched: list[int] = attrs.Factory(list)
    # The hot events as [event_ticker, usd, trades, contracts, market_count, [id, usd, price]...].
    hot_events: list[list[Any]] = attrs.Factory(list)
    detail_trades: list[tuple[int, int, Row]] = attrs.Factory(list)  # (ts, arrival, row), newest first
    tape: list[tuple[int, int, Row]] = attrs.Factory(list)  # newest first
    top: list[tuple[int, int, Row]] = attrs.Factory(list)  # (usd, arrival, row), largest first
    minute_ms: int = 0
    buckets: dict[AnalyticsMode, dict[int, list[int]]] = attrs.Factory(lambda: {"hour": {}, "day": {}})
    days: dict[int, list[int]] = attrs.Factory(dict)  # UTC day start -> [trades, usd]
    # Trader tools: alerts as (ts, arrival, row) newest first, row = [market, kind, side, usd,
    # contracts, trades, ts, first_ts] with absolute times; flows and movers as sent.
    alerts: list[tuple[int, int, list[int]]] = attrs.Factory(list)
    flows: list[list[int]] = attrs.Factory(list)
    movers: dict[str, list[list[int]]] = attrs.Factory(dict)
    missed: int = 0
    resyncs: int = 0
    errors: list[str] = attrs.Factory(list)
    unknown_events: dict[str, int] = attrs.Factory(dict)
    _last_ts: int = 0
    _arrival: int = 0

    # -- folding -------------------------------------------------------------------------

    def apply_frame(self, text: str | bytes) -> None:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"frame is not JSON: {exc}") from None
        if not isinstance(frame, list) or not frame or not isinstance(frame[0], int):
            raise DecodeError(f"frame must be [seq, event...], got {str(frame)[:80]}")
        if frame[0] < self.seq and not _starts_fresh(frame):
            raise DecodeError(f"seq went backwards: {frame[0]} after {self.seq}")
        for event in frame[1:]:
            if not isinstance(event, list) or not event or not isinstance(event[0], str):
                raise DecodeError(f"event must be [code, ...], got {str(event)[:80]}")
            handler = _HANDLERS.get(event[0])
            if handler is None:
                # A newer server may send events this client does not know: skip, as the page does.
                self.unknown_events[event[0]] = self.unknown_events.get(event[0], 0) + 1
                continue
            handler(self, event)
        self.seq = frame[0]

    def _hello(self, event: list[Any]) -> None:
        hello = event[1]
        if hello["v"] != v2.VERSION:
            raise DecodeError(f"protocol version {hello['v']}, expected {v2.VERSION}")
        if not hello["resumed"]:
            fresh = ViewState(
                tape_limit=self.tape_limit,
                detail_limit=self.detail_limit,
                alerts_limit=self.alerts_limit,
                missed=self.missed,
                resyncs=self.resyncs,
            )
            for field in attrs.fields(ViewState):
                setattr(self, field.name, getattr(fresh, field.name))
        self.epoch = hello["epoch"]
        self.t0 = hello["t0"]
        self._last_ts = self.t0
        self.minute_ms = self.t0 - self.t0 % MINUTE_MS
        self.channels = frozenset(hello["ch"])
        self.window_ms = hello["window_ms"]
        self.spark_len = hello["spark"]
        self.top_len = hello["top"]
        self.parlays = bool(hello.get("parlays", False))
        units = hello["units"]
        # A trade's usd is count x price, so its unit must be theirs multiplied.
        if units["usd"] != units["price"] + units["count"]:
            raise DecodeError(f"units {units}: usd decimals must be price + count decimals")
        self.one_dollar = 10 ** units["price"]

    def _resync(self, event: list[Any]) -> None:
        self.resyncs += 1
        self.missed += event[1]

    def _market(self, event: list[Any]) -> None:
        _, market, ticker, category, *flags = event
        parlay = bool(flags and flags[0])
        view = self.markets.get(market)
        if view is None or view.ticker != ticker:
            self.markets[market] = MarketView(ticker, category, parlay)
        else:
            view.category = category
            view.parlay = parlay

    def _info(self, event: list[Any]) -> None:
        _, market, title, close = event
        view = self.markets[market]
        view.title = title
        view.close_ms = None if close is None else close + self.t0

    def _clock(self, event: list[Any]) -> None:
        self.minute_ms = event[1] + self.t0
        hour_start = view_start_ms("hour", self.minute_ms)
        day_start = view_start_ms("day", self.minute_ms)
        self.buckets["hour"] = {k: v for k, v in self.buckets["hour"].items() if k >= hour_start}
        self.buckets["day"] = {k: v for k, v in self.buckets["day"].items() if k >= day_start}
        today = self.minute_ms - self.minute_ms % DAY_MS
        self.days = {k: v for k, v in self.days.items() if k >= today}
        # The server forgets trades older than the day view; so does the client.
        self.tape = [entry for entry in self.tape if entry[0] >= day_start]
        self.detail_trades = [entry for entry in self.detail_trades if entry[0] >= day_start]
        for view in self.markets.values():
            view.spark = [point for point in view.spark if point[0] >= day_start]

    def tracked(self) -> set[int]:
        tracked = set(self.hot) if "hot" in self.channels else set()
        tracked.update(self.watched)
        if self.detail is not None:
            tracked.add(self.detail)
        return tracked

    def _trades(self, event: list[Any]) -> None:
        folds = "trades" in self.channels
        tracked = self.tracked()
        for market, price, count, side, dt in event[1:]:
            ts = self._last_ts + dt
            self._last_ts = ts
            self._arrival += 1
            row: Row = (market, price, count, side, ts)
            usd = trade_usd(price, count, side, self.one_dollar)
            if folds:
                _insert_newest_first(self.tape, (ts, self._arrival, row))
                del self.tape[self.tape_limit :]
                if self.parlays or not self.markets[market].parlay:
                    self._insert_top(usd, row)
                for mode, (bucket_ms, _) in ANALYTICS_VIEWS.items():
                    start = floor_to(ts, bucket_ms)
                    if start >= view_start_ms(mode, self.minute_ms):
                        bucket = self.buckets[mode].setdefault(start, [0, 0])
                        bucket[0] += usd
                        bucket[1] += 1
                day = ts - ts % DAY_MS
                if day >= self.minute_ms - self.minute_ms % DAY_MS:
                    totals = self.days.setdefault(day, [0, 0])
                    totals[0] += 1
                    totals[1] += usd
            if market in tracked and (folds or market == self.detail):
                view = self.markets[market]
                if view.window is not None:
                    window = view.window
                    window[0] += count
                    window[1] += usd
                    window[2] += 1
                    window[3 if side else 4] += count
                self._insert_point(view, (ts, self._arrival, price, count, side))
            if market == self.detail:
                _insert_newest_first(self.detail_trades, (ts, self._arrival, row))
                del self.detail_trades[self.detail_limit :]

    def _insert_top(self, usd: int, row: Row) -> None:
        keys = [(-entry[0], entry[1]) for entry in self.top]
        position = bisect.bisect_right(keys, (-usd, self._arrival))
        self.top.insert(position, (usd, self._arrival, row))
        del self.top[self.top_len :]

    def _insert_point(self, view: MarketView, point: tuple[int, int, int, int, int]) -> None:
        bisect.insort(view.spark, point)
        del view.spark[: max(0, len(view.spark) - self.spark_len)]

    def _channels(self, event: list[Any]) -> None:
        self.channels = frozenset(event[1:])

    def _parlays(self, event: list[Any]) -> None:
        self.parlays = bool(event[1])

    def _watch(self, event: list[Any]) -> None:
        self.watched = list(event[1:])
        self._drop_untracked()

    def _hot_events(self, event: list[Any]) -> None:
        self.hot_events = [list(row) for row in event[1:]]

    def _hot(self, event: list[Any]) -> None:
        self.hot = list(event[1:])
        self._drop_untracked()

    def _drop_untracked(self) -> None:
        tracked = self.tracked()
        for market, view in self.markets.items():
            if market not in tracked:
                view.window = None
                view.spark = []

    def _window(self, event: list[Any]) -> None:
        self.markets[event[1]].window = list(event[2:])

    def _spark(self, event: list[Any]) -> None:
        _, market, mode, *points = event
        view = self.markets[market]
        if mode == 0:
            view.spark = []
        for price, count, side, ts in points:
            self._arrival += 1
            self._insert_point(view, (ts + self.t0, self._arrival, price, count, side))

    def _rows(self, rows: list[list[int]]) -> list[tuple[int, int, Row]]:
        held = []
        for market, price, count, side, ts in rows:
            self._arrival += 1
            held.append((ts + self.t0, self._arrival, (market, price, count, side, ts + self.t0)))
        return held

    def _top(self, event: list[Any]) -> None:
        self.top = [
            (trade_usd(row[1], row[2], row[3], self.one_dollar), arrival, row)
            for _, arrival, row in self._rows(event[1:])
        ]

    def _analytics(self, event: list[Any]) -> None:
        _, code, first, *buckets = event
        mode = v2.MODE_NAMES[code]
        bucket_ms, _ = ANALYTICS_VIEWS[mode]
        start = first + self.t0
        self.buckets[mode] = {start + i * bucket_ms: list(bucket) for i, bucket in enumerate(buckets)}

    def _period(self, event: list[Any]) -> None:
        _, code, start, usd, count = event
        self.buckets[v2.MODE_NAMES[code]][start + self.t0] = [usd, count]

    def _today(self, event: list[Any]) -> None:
        today = self.minute_ms - self.minute_ms % DAY_MS
        self.days[today] = [event[1], event[2]]

    def _tape(self, event: list[Any]) -> None:
        # The snapshot's tape is newest first: give older trades earlier arrival numbers.
        rows = self._rows(list(reversed(event[1:])))
        self.tape = list(reversed(rows))

    def _detail(self, event: list[Any]) -> None:
        _, market, *rows = event
        previous = self.detail
        self.detail = market
        if previous is not None and previous != market:
            self._drop_untracked()
        self.detail_trades = list(reversed(self._rows(list(reversed(rows)))))

    def _alerts(self, event: list[Any]) -> None:
        _, mode, *rows = event
        if mode == 0:
            # The snapshot is newest first: give older alerts earlier arrival numbers.
            self.alerts = []
            rows = list(reversed(rows))
        for market, kind, side, usd, contracts, trades, ts, first_ts in rows:
            self._arrival += 1
            row = [market, kind, side, usd, contracts, trades, ts + self.t0, first_ts + self.t0]
            position = 0
            while position < len(self.alerts) and self.alerts[position][:2] > (row[6], self._arrival):
                position += 1
            self.alerts.insert(position, (row[6], self._arrival, row))
        del self.alerts[self.alerts_limit :]

    def _flows(self, event: list[Any]) -> None:
        self.flows = [list(row) for row in event[1:]]

    def _movers(self, event: list[Any]) -> None:
        self.movers[event[1]] = [list(row) for row in event[2:]]

    def _error(self, event: list[Any]) -> None:
        self.errors.append(event[1])

    # -- reading ---------------------------------------------------------------------------

    def ranked_hot(self) -> list[int]:
        """Hot markets ranked like the server: $ volume descending, then ticker."""

        def key(market: int) -> tuple[int, str]:
            view = self.markets[market]
            return (-(view.window[1] if view.window else 0), view.ticker)

        return sorted(self.hot, key=key)

    def summary(self) -> dict[str, Any]:
        """A normalised, JSON-able view (the browser decoder produces the same shape)."""
        out: dict[str, Any] = {"seq": self.seq, "channels": sorted(self.channels)}
        if "hot" in self.channels:
            out["hot"] = [self._market_summary(m) for m in self.ranked_hot()]
        if "top" in self.channels:
            out["top"] = [self._row_summary(row) for _, _, row in self.top]
        for mode, (bucket_ms, bucket_count) in ANALYTICS_VIEWS.items():
            if mode in self.channels:
                start = view_start_ms(mode, self.minute_ms)
                held = self.buckets[mode]
                out[mode] = {
                    "first": start,
                    "buckets": [held.get(start + i * bucket_ms, [0, 0]) for i in range(bucket_count)],
                }
        if "today" in self.channels:
            today = self.minute_ms - self.minute_ms % DAY_MS
            out["today"] = self.days.get(today, [0, 0])
        if "trades" in self.channels:
            out["tape"] = [self._row_summary(row) for _, _, row in self.tape]
        if "events" in self.channels:
            out["events"] = [self._event_summary(row) for row in self.hot_events]
        if self.watched:
            out["watch"] = [self._market_summary(m) for m in self.watched]
        if self.parlays:
            out["parlays"] = True
        if self.detail is not None:
            detail = self._market_summary(self.detail)
            detail["trades"] = [self._row_summary(row) for _, _, row in self.detail_trades]
            out["detail"] = detail
        if "alerts" in self.channels:
            out["alerts"] = [[self.markets[row[0]].ticker, *row[1:]] for _, _, row in self.alerts]
        if "flows" in self.channels:
            out["flows"] = [[self.markets[row[0]].ticker, *row[1:]] for row in self.flows]
        if "movers" in self.channels:
            out["movers"] = {
                period: [[self.markets[row[0]].ticker, *row[1:]] for row in rows]
                for period, rows in sorted(self.movers.items())
            }
        return out

    def _market_summary(self, market: int) -> dict[str, Any]:
        view = self.markets[market]
        return {
            "ticker": view.ticker,
            "category": view.category,
            "title": view.title,
            "close_ms": view.close_ms,
            "window": view.window,
            "spark": [[price, count, side, ts] for ts, _, price, count, side in view.spark],
        }

    def _event_summary(self, row: list[Any]) -> dict[str, Any]:
        event_ticker, usd, trades, contracts, market_count, *members = row
        return {
            "event": event_ticker,
            "usd": usd,
            "trades": trades,
            "contracts": contracts,
            "market_count": market_count,
            "markets": [
                [self.markets[m].ticker, self.markets[m].title, m_usd, price] for m, m_usd, price in members
            ],
        }

    def _row_summary(self, row: Row) -> list[Any]:
        market, price, count, side, ts = row
        return [self.markets[market].ticker, price, count, side, ts]


def _starts_fresh(frame: list[Any]) -> bool:
    """A frame with a hello that is not a resume (a restarted server's snapshot may restart seq)."""
    for event in frame[1:3]:
        if isinstance(event, list) and event and event[0] == "H":
            return not event[1].get("resumed", False)
    return False


def _insert_newest_first(rows: list[tuple[int, int, Row]], entry: tuple[int, int, Row]) -> None:
    """Keep ``rows`` ordered by (ts, arrival) descending; a new entry is almost always first."""
    position = 0
    while position < len(rows) and rows[position][:2] > entry[:2]:
        position += 1
    rows.insert(position, entry)


_HANDLERS = {
    "H": ViewState._hello,
    "r": ViewState._resync,
    "m": ViewState._market,
    "i": ViewState._info,
    "c": ViewState._clock,
    "t": ViewState._trades,
    "C": ViewState._channels,
    "k": ViewState._hot,
    "w": ViewState._window,
    "s": ViewState._spark,
    "x": ViewState._top,
    "a": ViewState._analytics,
    "p": ViewState._period,
    "d": ViewState._today,
    "T": ViewState._tape,
    "D": ViewState._detail,
    "e": ViewState._error,
    "P": ViewState._parlays,
    "W": ViewState._watch,
    "E": ViewState._hot_events,
    "A": ViewState._alerts,
    "F": ViewState._flows,
    "M": ViewState._movers,
}


def expected_summary(
    agg: Aggregator,
    *,
    channels: frozenset[str],
    detail: str | None,
    tape_len: int,
    detail_len: int,
    parlays: bool = False,
    watch: tuple[str, ...] = (),
    alerts_len: int = 50,
) -> dict[str, Any]:
    """What ``ViewState.summary()`` must be for a client of ``channels`` at the aggregator's state."""

    def row(trade: Trade) -> list[Any]:
        return [trade.ticker, trade.yes_price, trade.count, v2.side_code(trade), trade.ts_ms]

    def market(market_id: int) -> dict[str, Any]:
        meta = agg.meta(market_id)
        window = agg.window(market_id)
        return {
            "ticker": meta.ticker,
            "category": meta.category,
            "title": meta.title,
            "close_ms": meta.close_ts_ms,
            "window": [window.contracts, window.usd, window.trades, window.yes_flow, window.no_flow],
            "spark": [v2.trade_point(t, 0) for t in agg.sparkline(market_id)],
        }

    out: dict[str, Any] = {"channels": sorted(channels)}
    if "hot" in channels:
        out["hot"] = [market(m) for m in agg.hot(parlays)]
    if "top" in channels:
        out["top"] = [row(t) for t in agg.top_trades(parlays)]
    for mode in ANALYTICS_VIEWS:
        if mode in channels:
            view = agg.analytics(mode)
            out[mode] = {"first": view.first_bucket_ms, "buckets": [list(b) for b in view.buckets]}
    if "today" in channels:
        out["today"] = list(agg.today())
    if "trades" in channels:
        out["tape"] = [row(t) for t in agg.recent_trades(tape_len)]
    if "events" in channels:
        out["events"] = [
            {
                "event": event.event_ticker,
                "usd": event.usd,
                "trades": event.trades,
                "contracts": event.contracts,
                "market_count": event.market_count,
                "markets": [
                    [agg.ticker(m.market), agg.meta(m.market).title, m.usd, m.last_price]
                    for m in event.markets
                ],
            }
            for event in agg.hot_events(parlays)
        ]
    watched = [m for m in map(agg.market_id, watch) if m is not None]
    if watched:
        out["watch"] = [market(m) for m in watched]
    if parlays:
        out["parlays"] = True
    if detail is not None:
        market_id = agg.market_id(detail)
        if market_id is not None:
            summary = market(market_id)
            summary["trades"] = [row(t) for t in agg.market_trades(market_id, detail_len)]
            out["detail"] = summary
    if "alerts" in channels:
        out["alerts"] = [
            [alert.trade.ticker, *v2.alert_row(0, alert, 0)[1:]]
            for alert in agg.alerts(limit=alerts_len)
            if agg.market_id(alert.trade.ticker) is not None  # not streamed: see the session
        ]
    if "flows" in channels:
        out["flows"] = [[agg.ticker(f.market), *v2.flow_row(f)[1:]] for f in agg.published_flows()]
    if "movers" in channels:
        out["movers"] = {
            period: [[agg.ticker(m.market), *v2.move_row(m)[1:]] for m in agg.published_moves(period)]
            for period in sorted(MOVER_WINDOWS)
        }
    return out

"""The quart-trio application: the page, the JSON API, health, metrics and the WebSockets.

Money and sizes in the JSON API are exact decimal strings ("0.3600", "136.00"); times are
Unix milliseconds. The API reads the same aggregator the streams are built from.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
from quart import Response, request, send_from_directory
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

from flowboard.aggregate.aggregator import ALERTS_KEPT, ANALYTICS_VIEWS, Aggregator, AnalyticsMode
from flowboard.aggregate.alerts import Alert
from flowboard.aggregate.events_rank import HotEvent
from flowboard.aggregate.flows import Flow
from flowboard.aggregate.movers import MOVER_WINDOWS, Move
from flowboard.errors import BadRequest, StoreError
from flowboard.model import (
    COUNT_DECIMALS,
    DAY_MS,
    MAX_NAME_CHARS,
    PRICE_DECIMALS,
    USD_DECIMALS,
    MarketMeta,
    Trade,
    from_units,
    iso_utc,
    units_text,
)
from flowboard.server import connection, guards, history, legacy, page_policy
from flowboard.server import websocket as ws_v2
from flowboard.server.runtime import Runtime
from flowboard.store import CANDLE_INTERVALS_MS, Candle, Store


def _json(payload: Any, status: int = 200) -> Response:
    response = Response(orjson.dumps(payload), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = page_policy.API_CACHE_CONTROL
    return response


def _price(units: int) -> str:
    # "0.3600" as Kalshi writes prices, "0.36505" where a price has more decimals.
    return units_text(units, PRICE_DECIMALS, 4)


def _count(units: int) -> str:
    return str(from_units(units, COUNT_DECIMALS))


def _usd(units: int) -> str:
    # At least 6 decimals, all 8 where a sub-cent price makes them non-zero.
    return units_text(units, USD_DECIMALS, 6)


def trade_json(trade: Trade) -> dict[str, Any]:
    return {
        "trade_id": trade.trade_id,
        "ticker": trade.ticker,
        "yes_price": _price(trade.yes_price),
        "no_price": _price(trade.no_price),
        "count": _count(trade.count),
        "taker_side": trade.taker_side,
        "usd_volume": _usd(trade.usd),
        "ts_ms": trade.ts_ms,
    }


def market_json(agg: Aggregator, market: int) -> dict[str, Any]:
    meta = agg.meta(market)
    window = agg.window(market)
    last = agg.last_trade(market)
    return {
        "ticker": meta.ticker,
        "title": meta.title,
        "category": meta.category,
        "event_ticker": meta.event_ticker,
        "parlay": agg.is_parlay(market),
        "close_time": iso_utc(meta.close_ts_ms),
        "last_price": None if last is None else _price(last.yes_price),
        "window": {
            "contracts": _count(window.contracts),
            "usd_volume": _usd(window.usd),
            "trades": window.trades,
            "yes_flow": _count(window.yes_flow),
            "no_flow": _count(window.no_flow),
            "net_flow": _count(window.net_flow),
        },
        "sparkline": [
            {"price": _price(t.yes_price), "count": _count(t.count), "side": t.taker_side, "ts_ms": t.ts_ms}
            for t in agg.sparkline(market)
        ],
    }


def analytics_json(agg: Aggregator, mode: AnalyticsMode) -> dict[str, Any]:
    view = agg.analytics(mode)

    def bucket(index: int) -> dict[str, Any]:
        usd, trades = view.buckets[index]
        return {
            "start_ms": view.first_bucket_ms + index * view.bucket_ms,
            "usd_volume": _usd(usd),
            "trades": trades,
        }

    return {
        "mode": mode,
        "bucket_ms": view.bucket_ms,
        "buckets": [bucket(i) for i in range(len(view.buckets))],
        "current": bucket(len(view.buckets) - 1),
        "total_usd_volume": _usd(view.total_usd),
        "total_trades": view.total_trades,
        "peak_usd_volume": _usd(view.peak_usd),
        "peak_trades": view.peak_trades,
    }


def alert_json(alert: Alert) -> dict[str, Any]:
    trade = alert.trade
    return {
        "id": alert.alert_id,
        "kind": alert.kind,
        "ticker": trade.ticker,
        "side": trade.taker_side,
        "usd_volume": _usd(alert.usd),
        "contracts": _count(alert.contracts),
        "trades": alert.trades,
        "price": _price(trade.yes_price),
        "ts_ms": trade.ts_ms,
        "first_ts_ms": alert.first_ts_ms,
        "trade_id": trade.trade_id,
    }


def flow_json(agg: Aggregator, flow: Flow) -> dict[str, Any]:
    meta = agg.meta(flow.market)
    return {
        "ticker": meta.ticker,
        "title": meta.title,
        "side": flow.side,
        "usd_volume": _usd(flow.usd),
        "contracts": _count(flow.contracts),
        "trades": flow.trades,
        "vwap": _price(flow.vwap),
    }


def mover_json(agg: Aggregator, move: Move) -> dict[str, Any]:
    meta = agg.meta(move.market)
    change_bp = move.change_bp
    return {
        "ticker": meta.ticker,
        "title": meta.title,
        "first_price": _price(move.first_price),
        "last_price": _price(move.last_price),
        "change": _price(move.change),
        "change_pct": None if change_bp is None else str(from_units(change_bp, 2)),
        "usd_volume": _usd(move.usd),
        "trades": move.trades,
    }


#: A query integer as we take it: ASCII digits only (str.isdigit() also takes "²", which int()
#: refuses), at most 19 of them (int64, and far below Python's digit limit for int()).
_ASCII_INTEGER = re.compile(r"[0-9]{1,19}")

#: Latest time a ``before=`` cursor can name: the store's times are signed 64-bit.
_MAX_TS_MS = 2**63 - 1


def _shown(text: str) -> str:
    """A client's value, quoted and cut short, for an error message."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}… ({len(text)} characters)"


def _int_arg(name: str, expected: str, minimum: int, maximum: int) -> int | None:
    """Query parameter ``name`` as an integer in [minimum, maximum], None when absent."""
    text = request.args.get(name)
    if text is None:
        return None
    if _ASCII_INTEGER.fullmatch(text) is None or not minimum <= int(text) <= maximum:
        raise BadRequest(f"{name} must be {expected}, got {_shown(text)}")
    return int(text)


def _limit(default: int, maximum: int) -> int:
    limit = _int_arg("limit", f"a whole number from 1 to {maximum}", 1, maximum)
    return default if limit is None else limit


def _parlays() -> bool:
    """``?parlays=1``: rankings with combination markets (``0`` or absent: without)."""
    text = request.args.get("parlays")
    if text is None or text == "0":
        return False
    if text == "1":
        return True
    raise BadRequest(f"parlays must be 0 or 1, got {_shown(text)}")


def hot_event_json(agg: Aggregator, event: HotEvent) -> dict[str, Any]:
    return {
        "event_ticker": event.event_ticker,
        "window": {
            "usd_volume": _usd(event.usd),
            "trades": event.trades,
            "contracts": _count(event.contracts),
        },
        "market_count": event.market_count,
        "markets": [
            {
                "ticker": agg.ticker(member.market),
                "title": agg.meta(member.market).title,
                "usd_volume": _usd(member.usd),
                "last_price": _price(member.last_price),
                "parlay": agg.is_parlay(member.market),
            }
            for member in event.markets
        ],
    }


def _name(kind: str, text: str) -> str:
    """A ticker or trade id as the store can take it: printable and of reasonable length."""
    if not text or len(text) > MAX_NAME_CHARS or not text.isprintable():
        raise BadRequest(f"{kind} must be 1 to {MAX_NAME_CHARS} printable characters, got {_shown(text)}")
    return text


def candle_json(candle: Candle) -> dict[str, Any]:
    return {
        "start_ms": candle.start_ms,
        "open": _price(candle.open),
        "high": _price(candle.high),
        "low": _price(candle.low),
        "close": _price(candle.close),
        "usd_volume": _usd(candle.usd),
        "trades": candle.trades,
    }


#: How far back candles start when the request names no ``since``, per interval.
_CANDLES_DEFAULT_SPAN_MS = {"1m": DAY_MS, "1h": 7 * DAY_MS}
_CANDLES_DEFAULT_LIMIT = 1_500
_CANDLES_MAX_LIMIT = 10_000

_NOT_AVAILABLE = "the trade history is not available right now; try again later"


def _time_range() -> tuple[int, int]:
    """``since`` and ``until`` (Unix ms, until excluded) of an export: everything stored when absent."""
    since = _int_arg("since", f"a time in Unix ms from 0 to {_MAX_TS_MS}", 0, _MAX_TS_MS)
    until = _int_arg("until", f"a time in Unix ms from 0 to {_MAX_TS_MS}", 0, _MAX_TS_MS)
    since = 0 if since is None else since
    until = _MAX_TS_MS if until is None else until
    if until < since:
        raise BadRequest(f"until must not be before since, got since={since} and until={until}")
    return since, until


async def _csv_export(
    store: Store,
    filename: str,
    since: int,
    until: int,
    *,
    ticker: str | None,
    tape_filter: history.TapeFilter,
    meta_of: Callable[[str], MarketMeta | None],
) -> Response:
    """A streamed CSV download: the first chunk is read before the answer starts, so that a
    database that is down gets a 503; the rest is read a chunk at a time as the client takes it."""
    chunks = store.export_trades(since, until, ticker=ticker, min_usd=tape_filter.min_usd)
    passes = history.market_check(tape_filter, meta_of)
    try:
        first: list[Trade] = await anext(chunks, [])
    except StoreError:
        await chunks.aclose()
        return _json({"error": _NOT_AVAILABLE}, 503)

    def text(trades: list[Trade]) -> bytes:
        if tape_filter.by_market:
            trades = [t for t in trades if passes(t.ticker)]
        return history.csv_text([history.csv_row(t) for t in trades]).encode()

    async def body() -> AsyncIterator[bytes]:
        # A database failing mid-export raises here: the server then cuts the chunked answer
        # short, so the download fails instead of looking complete.
        async with aclosing(chunks):
            yield history.csv_text([history.CSV_HEADER]).encode() + text(first)
            async for chunk in chunks:
                yield text(chunk)

    response = Response(body(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = page_policy.API_CACHE_CONTROL
    return response


def create_app(runtime: Runtime) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    app.asgi_app = guards.guard(  # type: ignore[method-assign]
        connection.capture(app.asgi_app), runtime.config.server, runtime.metrics
    )
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    agg = runtime.agg
    web_dir = Path(runtime.config.server.web_dir)
    index_path = web_dir / "index.html"
    csp = page_policy.content_security_policy(index_path.read_text() if index_path.is_file() else "")

    @app.errorhandler(BadRequest)
    async def bad_request(error: BadRequest) -> Response:
        return _json({"error": str(error)}, 400)

    @app.after_request
    async def security_headers(response: Response) -> Response:
        headers = response.headers
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = page_policy.FRAME_OPTIONS
        headers["Content-Security-Policy"] = csp
        return response

    async def page_file(name: str) -> Response:
        try:
            response = await send_from_directory(web_dir, name)
        except OSError:
            # A name the file system refuses (too long, ...) names no file of ours.
            raise NotFound() from None
        response.headers["Cache-Control"] = page_policy.PAGE_CACHE_CONTROL
        return response

    @app.route("/")
    async def index() -> Response:
        return await page_file("index.html")

    @app.route("/<path:name>")
    async def static_file(name: str) -> Response:
        return await page_file(name)

    @app.route("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.route("/readyz")
    async def readyz() -> Response:
        problems = runtime.readiness_problems()
        if problems:
            return _json({"ready": False, "reasons": problems}, 503)
        return _json({"ready": True})

    @app.route("/metrics")
    async def metrics() -> Response:
        response = Response(runtime.metrics.render(), mimetype="text/plain; version=0.0.4")
        response.headers["Cache-Control"] = page_policy.API_CACHE_CONTROL
        return response

    @app.route("/api/stats")
    async def stats() -> Response:
        trades, usd = agg.today()
        return _json(
            {
                "now_ms": agg.now_ms,
                "today": {"trades": trades, "usd_volume": _usd(usd)},
                "trades_total": agg.trades_total,
                "active_markets": agg.active_markets(),
                "markets": agg.markets_count(),
                # WebSocket connections, all together and per protocol.
                "clients": sum(runtime.open_connections.values()),
                "clients_by_protocol": dict(runtime.open_connections),
                "seq": runtime.hub.seq,
            }
        )

    @app.route("/api/markets/hot")
    async def hot_markets() -> Response:
        hot = agg.hot(_parlays())
        return _json(
            {"markets": [dict(market_json(agg, m), rank=rank) for rank, m in enumerate(hot, start=1)]}
        )

    @app.route("/api/events/hot")
    async def hot_events() -> Response:
        ranked = agg.hot_events(_parlays())
        return _json(
            {"events": [dict(hot_event_json(agg, e), rank=rank) for rank, e in enumerate(ranked, 1)]}
        )

    @app.route("/api/markets/<ticker>")
    async def market(ticker: str) -> Response:
        market_id = agg.market_id(ticker)
        if market_id is None:
            return _json({"error": f"no trade seen for market {ticker[:80]!r}"}, 404)
        body = market_json(agg, market_id)
        body["trades"] = [trade_json(t) for t in agg.market_trades(market_id, _limit(50, 1000))]
        return _json(body)

    @app.route("/api/markets/<ticker>/trades")
    async def market_history(ticker: str) -> Response:
        """A market's stored trades, newest first; page with ?before=<ts_ms>&before_id=<trade_id>."""
        _name("the ticker", ticker)
        before = _int_arg("before", f"a time in Unix ms from 0 to {_MAX_TS_MS}", 0, _MAX_TS_MS)
        before_id = request.args.get("before_id")
        if before_id is not None:
            _name("before_id", before_id)
        limit = _limit(100, 1000)
        assert runtime.store is not None
        try:
            trades = await runtime.store.market_trades(ticker, before, limit, before_trade_id=before_id)
        except StoreError:
            # The writer logs what the database said; the client learns only that it may retry.
            return _json({"error": "the trade history is not available right now; try again later"}, 503)
        body: dict[str, Any] = {"ticker": ticker, "trades": [trade_json(t) for t in trades]}
        if trades:
            body["next"] = {"before": trades[-1].ts_ms, "before_id": trades[-1].trade_id}
        return _json(body)

    @app.route("/api/markets/<ticker>/candles")
    async def market_candles(ticker: str) -> Response:
        """A market's candles from the store, oldest first; page with ?since=<next.since>."""
        _name("the ticker", ticker)
        interval = request.args.get("interval", "1m")
        if interval not in CANDLE_INTERVALS_MS:
            raise BadRequest(f"interval must be '1m' or '1h', got {_shown(interval)}")
        interval_ms = CANDLE_INTERVALS_MS[interval]
        since = _int_arg("since", f"a time in Unix ms from 0 to {_MAX_TS_MS}", 0, _MAX_TS_MS)
        if since is None:
            since = max(0, runtime.wall_ms() - _CANDLES_DEFAULT_SPAN_MS[interval])
        limit = _limit(_CANDLES_DEFAULT_LIMIT, _CANDLES_MAX_LIMIT)
        assert runtime.store is not None
        try:
            page = await runtime.store.market_candles(ticker, interval_ms, since, limit)
        except StoreError:
            return _json({"error": _NOT_AVAILABLE}, 503)
        body: dict[str, Any] = {
            "ticker": ticker,
            "interval": interval,
            "interval_ms": interval_ms,
            "candles": [candle_json(c) for c in page.candles],
            # The newest candle's last trade: a client extending it live adds the trades after it.
            "last_trade_ms": page.candles[-1].last_trade_ms if page.candles else None,
        }
        if page.next_since_ms is not None:
            body["next"] = {"since": page.next_since_ms}
        return _json(body)

    def meta_of(ticker: str) -> MarketMeta | None:
        market_id = agg.market_id(ticker)
        return None if market_id is None else agg.meta(market_id)

    @app.route("/api/markets/<ticker>/trades.csv")
    async def market_csv(ticker: str) -> Response:
        """A market's stored trades in [since, until) as a CSV download, oldest first."""
        _name("the ticker", ticker)
        since, until = _time_range()
        assert runtime.store is not None
        filename = history.export_filename(ticker, runtime.wall_ms())
        return await _csv_export(
            runtime.store,
            filename,
            since,
            until,
            ticker=ticker,
            tape_filter=history.TapeFilter(),
            meta_of=meta_of,
        )

    @app.route("/api/trades.csv")
    async def trades_csv() -> Response:
        """Every market's stored trades in [since, until) that pass the tape's filter (q: text in
        the ticker or title, category, min_usd in dollars), as a CSV download, oldest first."""
        since, until = _time_range()
        text = request.args.get("q", "").strip()
        category = request.args.get("category", "")
        for name, value in (("q", text), ("category", category)):
            if len(value) > MAX_NAME_CHARS:
                raise BadRequest(f"{name} must be at most {MAX_NAME_CHARS} characters, got {_shown(value)}")
        min_text = request.args.get("min_usd")
        min_usd = 0 if min_text is None else history.dollars_to_usd_units("min_usd", min_text)
        tape_filter = history.TapeFilter(text=text, category=category, min_usd=min_usd)
        assert runtime.store is not None
        filename = history.export_filename("trades", runtime.wall_ms())
        described = meta_of
        if tape_filter.by_market:
            # The aggregator forgets markets quiet for a day; the store keeps every description.
            stored = {meta.ticker: meta for meta in await runtime.store.load_meta()}

            def described(ticker: str) -> MarketMeta | None:
                return meta_of(ticker) or stored.get(ticker)

        return await _csv_export(
            runtime.store, filename, since, until, ticker=None, tape_filter=tape_filter, meta_of=described
        )

    @app.route("/api/trades/recent")
    async def recent_trades() -> Response:
        return _json({"trades": [trade_json(t) for t in agg.recent_trades(_limit(50, 1000))]})

    @app.route("/api/trades/top")
    async def top_trades() -> Response:
        return _json({"trades": [trade_json(t) for t in agg.top_trades(_parlays())]})

    @app.route("/api/analytics")
    async def analytics() -> Response:
        mode = request.args.get("mode", "hour")
        if mode not in ANALYTICS_VIEWS:
            return _json({"error": f"mode must be 'hour' or 'day', got {mode[:20]!r}"}, 400)
        return _json(analytics_json(agg, mode))

    @app.route("/api/alerts")
    async def alerts() -> Response:
        """Whale and accumulation alerts, newest first (README "Trader tools")."""
        since = _int_arg("since", f"a time in Unix ms from 0 to {_MAX_TS_MS}", 0, _MAX_TS_MS)
        limit = _limit(100, ALERTS_KEPT)
        return _json({"alerts": [alert_json(a) for a in agg.alerts(since or 0, limit)]})

    @app.route("/api/flows")
    async def flows() -> Response:
        limit = _limit(50, 1000)
        rows = agg.flows(limit, include_parlays=_parlays())
        return _json({"window_ms": agg.window_ms, "flows": [flow_json(agg, f) for f in rows]})

    @app.route("/api/movers")
    async def movers() -> Response:
        window = request.args.get("window", "10m")
        if window not in MOVER_WINDOWS:
            raise BadRequest(f"window must be one of {', '.join(MOVER_WINDOWS)}, got {_shown(window)}")
        limit = _limit(20, 1000)
        rows = agg.movers(window, limit, include_parlays=_parlays())
        return _json(
            {
                "window": window,
                "min_usd_volume": _usd(agg.movers_min_usd),
                "movers": [mover_json(agg, m) for m in rows],
            }
        )

    @app.websocket("/ws")
    async def stream_v2() -> None:
        with runtime.connection("v2"):
            await ws_v2.serve_v2(runtime)

    @app.websocket("/ws/stream")
    async def stream_v1() -> None:
        with runtime.connection("v1"):
            await legacy.serve_v1(runtime)

    return app

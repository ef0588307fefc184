"""Market metadata (title, category, close time), fetched off the hot path.

The pipeline hands tickers to ``serve_metadata`` through a bounded channel (with
``send_nowait``: a full channel means the fetcher is busy, and the ticker can simply be
offered again with its next trade). The fetcher drains the channel into its own
de-duplicated queue, asks ``GET /markets?tickers=A,B,...`` in batches, then the
event and the series of each market (both cached), and calls ``on_meta`` with a
:class:`~flowboard.model.MarketMeta` per market. Results are refreshed after ``ttl_s``
while the market is still held; what expires is dropped, so memory follows the markets held.

Kalshi's fields, as its API documents them: a market has no category and its ``title`` is deprecated;
the title shown is the event's title plus the market's ``yes_sub_title`` where that
tells the markets of one event apart, and the category is the series'.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs
import trio

from flowboard.errors import RestUnavailable
from flowboard.ingest.kalshi import KalshiConfig
from flowboard.ingest.kalshi_rest import RestClient, open_rest_client
from flowboard.model import COUNT_DECIMALS, USD_DECIMALS, MarketMeta, series_of, to_units

log = logging.getLogger(__name__)

#: The most tickers one ``/markets?tickers=`` request carries (keeps the URL short).
BATCH_SIZE = 100


@attrs.frozen
class MetadataStatistics:
    described: int  # on_meta calls
    unknown: int  # tickers Kalshi does not list
    failures: int  # batches that failed and were put back for later
    rest_requests: int
    rest_429s: int


def _parse_time_ms(value: object) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


#: The largest figure the store's BIGINT columns and the scale-out stream's integers hold.
_MAX_UNITS = 2**63 - 1


def _decimal_units(value: object, decimals: int) -> int | None:
    """An exact decimal string as units of 10**-decimals; None when absent, not exact (a figure
    we cannot show exactly is better left unknown than rounded) or beyond 64 bits."""
    if not isinstance(value, str):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    # Compared before any conversion: the integer of "1e100000" takes seconds to build.
    if not number.is_finite() or number < 0 or number.scaleb(decimals) > _MAX_UNITS:
        return None
    return to_units(number, decimals)


def _open_interest(market: dict[str, Any]) -> int | None:
    """Contracts held open, in hundredths: ``open_interest_fp``, else the legacy integer."""
    units = _decimal_units(market.get("open_interest_fp"), COUNT_DECIMALS)
    legacy = market.get("open_interest")
    if units is None and isinstance(legacy, int) and not isinstance(legacy, bool) and legacy >= 0:
        units = legacy * 10**COUNT_DECIMALS
        if units > _MAX_UNITS:
            return None
    return units


def _text(obj: dict[str, Any] | None, field: str) -> str:
    value = (obj or {}).get(field)
    return value if isinstance(value, str) else ""


def build_meta(
    market: dict[str, Any], event: dict[str, Any] | None, series: dict[str, Any] | None
) -> MarketMeta:
    """A market's :class:`MarketMeta` from Kalshi's market, event and series objects."""
    ticker = _text(market, "ticker")
    event_ticker = _text(market, "event_ticker") or _text(event, "event_ticker")
    series_ticker = _text(event, "series_ticker") or series_of(event_ticker or ticker)
    event_title = _text(event, "title")
    sub = _text(market, "yes_sub_title")
    if event_title:
        title = f"{event_title} — {sub}" if sub and sub.casefold() != event_title.casefold() else event_title
    else:
        title = _text(market, "title") or sub or ticker
    return MarketMeta(
        ticker=ticker,
        title=title,
        category=_text(series, "category") or _text(event, "category"),
        close_ts_ms=_parse_time_ms(market.get("close_time")),
        event_ticker=event_ticker,
        series_ticker=series_ticker,
        open_interest=_open_interest(market),
        # Deprecated in Kalshi's API (always "0.0000" today), shown as it comes.
        liquidity=_decimal_units(market.get("liquidity_dollars"), USD_DECIMALS),
        mve_collection_ticker=_text(market, "mve_collection_ticker"),
    )


class MetadataFetcher:
    """Turns tickers into :class:`MarketMeta`; ``serve_metadata`` runs one."""

    def __init__(
        self,
        rest: RestClient,
        on_meta: Callable[[MarketMeta], None],
        *,
        ttl_s: float,
        retry_s: float,
        batch_size: int = BATCH_SIZE,
        batch_wait_s: float = 0.5,
        still_wanted: Callable[[str], bool] = lambda ticker: True,
    ) -> None:
        self._rest = rest
        # Whether a ticker's description is still worth refreshing (its market is still held):
        # the others are forgotten here too, or this would grow with every market ever seen.
        self._still_wanted = still_wanted
        self._batch_wait_s = batch_wait_s
        self._on_meta = on_meta
        self._ttl_s = ttl_s
        self._retry_s = retry_s  # a failed batch is tried again this much later
        self._batch_size = batch_size
        self._pending: dict[str, None] = {}  # insertion-ordered set of tickers to fetch
        self._in_flight: set[str] = set()  # the batch being fetched now
        self._due: dict[str, float] = {}  # ticker -> trio time its description expires
        self._events: dict[str, tuple[float, dict[str, Any] | None]] = {}  # cache with expiry
        self._series: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._work = trio.Event()  # set when _pending gains tickers
        self._described = 0
        self._unknown = 0
        self._failures = 0

    def statistics(self) -> MetadataStatistics:
        rest = self._rest.statistics()
        return MetadataStatistics(
            self._described, self._unknown, self._failures, rest.requests, rest.rate_limited
        )

    def want(self, ticker: str) -> None:
        """Queue ``ticker`` unless its description is still fresh or already queued."""
        due = self._due.get(ticker)
        if ticker and ticker not in self._in_flight and (due is None or due <= trio.current_time()):
            self._pending[ticker] = None

    async def run(self, requests: trio.MemoryReceiveChannel[str]) -> None:
        """Serve until ``requests`` is closed."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._worker)
            nursery.start_soon(self._refresher)
            async for ticker in requests:
                self.want(ticker)
                if self._pending:
                    self._work.set()
            nursery.cancel_scope.cancel()

    async def _worker(self) -> None:
        while True:
            await self._work.wait()
            # Let a burst of new markets gather into one batch.
            await trio.sleep(self._batch_wait_s)
            self._work = trio.Event()
            while self._pending:
                batch = list(self._pending)[: self._batch_size]
                for ticker in batch:
                    del self._pending[ticker]
                self._in_flight = set(batch)
                try:
                    await self._fetch_batch(batch)
                finally:
                    self._in_flight = set()

    async def _refresher(self) -> None:
        while True:
            await trio.sleep(min(self._ttl_s, 60.0))
            now = trio.current_time()
            for ticker, due in list(self._due.items()):
                if due > now:
                    continue
                if self._still_wanted(ticker):
                    self._pending[ticker] = None
                else:
                    del self._due[ticker]
            for cache in (self._events, self._series):
                for key, (expires, _) in list(cache.items()):
                    if expires <= now:
                        del cache[key]
            if self._pending:
                self._work.set()

    async def _fetch_batch(self, batch: list[str]) -> None:
        try:
            markets = await self._markets(batch)
            seen = set()
            for market in markets:
                ticker = _text(market, "ticker")
                if not ticker:
                    continue
                seen.add(ticker)
                event_ticker = _text(market, "event_ticker")
                event = await self._cached(self._events, "/events/", event_ticker, "event")
                series_ticker = _text(event, "series_ticker") or series_of(event_ticker or ticker)
                series = await self._cached(self._series, "/series/", series_ticker, "series")
                self._due[ticker] = trio.current_time() + self._ttl_s
                self._described += 1
                self._on_meta(build_meta(market, event, series))
        except RestUnavailable as exc:
            self._failures += 1
            log.warning("metadata: %d markets not described yet (%s); retrying later", len(batch), exc)
            retry_at = trio.current_time() + self._retry_s
            for ticker in batch:
                self._due.setdefault(ticker, retry_at)
            return
        for ticker in batch:
            if ticker not in seen:
                self._unknown += 1
                self._due[ticker] = trio.current_time() + self._ttl_s

    async def _markets(self, tickers: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor = ""
        while True:
            params: dict[str, str | int] = {"tickers": ",".join(tickers), "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = await self._rest.get_json("/markets", params)
            markets = page.get("markets")
            if isinstance(markets, list):
                found.extend(m for m in markets if isinstance(m, dict))
            next_cursor = page.get("cursor")
            if not isinstance(next_cursor, str) or not next_cursor or next_cursor == cursor:
                return found
            cursor = next_cursor

    async def _cached(
        self,
        cache: dict[str, tuple[float, dict[str, Any] | None]],
        prefix: str,
        key: str,
        field: str,
    ) -> dict[str, Any] | None:
        if not key:
            return None
        hit = cache.get(key)
        if hit is not None and hit[0] > trio.current_time():
            return hit[1]
        try:
            body = await self._rest.get_json(prefix + key)
        except RestUnavailable as exc:
            if exc.status != 404:
                raise
            body = {}
        value = body.get(field)
        obj = value if isinstance(value, dict) else None
        cache[key] = (trio.current_time() + self._ttl_s, obj)
        return obj


async def serve_metadata(
    config: KalshiConfig,
    requests: trio.MemoryReceiveChannel[str],
    on_meta: Callable[[MarketMeta], None],
    *,
    wall_ms: Callable[[], int],
    rate_per_s: float = 10.0,
    ttl_s: float = 6 * 3600.0,
    retry_s: float = 60.0,
    batch_size: int = BATCH_SIZE,
    batch_wait_s: float = 0.5,
    still_wanted: Callable[[str], bool] = lambda ticker: True,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[MetadataFetcher] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Describe every ticker received on ``requests`` by calling ``on_meta`` (sync, must not block),
    and again every ``ttl_s`` while ``still_wanted(ticker)``.

    Uses ``config``'s REST URL and key; at most ``rate_per_s`` requests per second.
    ``nursery.start`` returns the :class:`MetadataFetcher` (for ``statistics()``).
    Returns when ``requests`` is closed.
    """
    signing_key = config.signing_key()
    async with open_rest_client(
        config.resolved_rest_url,
        signing_key=signing_key,
        wall_ms=wall_ms,
        rate_per_s=rate_per_s,
        rng=rng,
    ) as rest:
        fetcher = MetadataFetcher(
            rest,
            on_meta,
            ttl_s=ttl_s,
            retry_s=retry_s,
            batch_size=batch_size,
            batch_wait_s=batch_wait_s,
            still_wanted=still_wanted,
        )
        task_status.started(fetcher)
        await fetcher.run(requests)

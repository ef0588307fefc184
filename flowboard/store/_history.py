"""A market's price history as candles, and trades as pages for export: the parts the SQL of
both backends shares (the statements' text, the page bounds, the exact fallback).

A candle is one period (a minute or an hour, UTC) of one market's trades: open and close are
the YES price of its first and last trade in (ts_ms, arrival) order, high and low its extremes,
and it carries the period's $ volume and trade count. Periods without a trade have no candle.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from flowboard.model import HOUR_MS, MINUTE_MS, Trade

from ._summary import USD_SQL

#: The periods a candle can cover, by their name in the API.
CANDLE_INTERVALS_MS: dict[str, int] = {"1m": MINUTE_MS, "1h": HOUR_MS}


@attrs.frozen
class Candle:
    start_ms: int  # the period's first millisecond, Unix ms (UTC)
    open: int  # YES prices, in price units ($0.000001)
    high: int
    low: int
    close: int
    usd: int  # $ volume, in USD units
    trades: int
    #: Its last trade's time: a page that extends the newest candle with live trades takes
    #: those after this one.
    last_trade_ms: int


@attrs.frozen
class CandlePage:
    """Candles oldest first, and where the next page starts: the start of the period of the
    market's next stored trade (so a page never ends in a run of empty periods), or None
    when there is none."""

    candles: list[Candle]
    next_since_ms: int | None


def period_start(ts_ms: int, interval_ms: int) -> int:
    return ts_ms - ts_ms % interval_ms


_LATEST_MS = 2**63 - 1


def page_span(since_ms: int, interval_ms: int, limit: int) -> tuple[int, int]:
    """The trade times [start, end) a page of at most ``limit`` candles covers: whole periods,
    from the one ``since_ms`` falls in. Bounding the range, not the rows, keeps the query an
    index range read however busy the market."""
    start = period_start(since_ms, interval_ms)
    # The store's times are signed 64-bit: a page cannot end beyond the latest of them.
    return start, min(start + limit * interval_ms, _LATEST_MS)


# Named parameters: :name in SQLite, %(name)s in PostgreSQL. PostgreSQL aggregates the periods
# in one pass over the market's index range; open and close are each one index seek per period.
_CANDLES_TEMPLATE = (
    "WITH periods AS ("
    "SELECT (ts_ms / {iv}) * {iv} AS start_ms, MAX(yes_price) AS high, MIN(yes_price) AS low, "
    "{usd_sum} AS usd, COUNT(usd) AS usd_known, COUNT(*) AS trades, MAX(ts_ms) AS last_ms "
    f"FROM (SELECT ts_ms, yes_price, {USD_SQL} AS usd FROM trades "
    "WHERE ticker = {ticker} AND ts_ms >= {start} AND ts_ms < {end}) AS market "
    "GROUP BY 1) "
    "SELECT start_ms, "
    "(SELECT yes_price FROM trades WHERE ticker = {ticker} AND ts_ms >= start_ms "
    "ORDER BY ts_ms, arrival LIMIT 1), "
    "high, low, "
    "(SELECT yes_price FROM trades WHERE ticker = {ticker} AND ts_ms < start_ms + {iv} "
    "ORDER BY ts_ms DESC, arrival DESC LIMIT 1), "
    "usd, usd_known, trades, last_ms FROM periods ORDER BY start_ms"
)
# SQLite sorts every trade of the range for a GROUP BY on the period (twice the time of the
# whole query on a busy market), and has no LATERAL join: so each period of the page is one
# index range read of its own, its figures gathered in one JSON array (MATERIALIZED: read once).
# Needs SQLite 3.35.
_CANDLES_SQLITE_TEMPLATE = (
    "WITH RECURSIVE periods(start_ms) AS (SELECT {start} UNION ALL "
    "SELECT start_ms + {iv} FROM periods WHERE start_ms + {iv} < {end}), "
    "figures AS MATERIALIZED (SELECT start_ms, ("
    "SELECT json_array(MAX(yes_price), MIN(yes_price), {usd_sum}, COUNT(usd), COUNT(*), MAX(ts_ms)) "
    f"FROM (SELECT ts_ms, yes_price, {USD_SQL} AS usd FROM trades "
    "WHERE ticker = {ticker} AND ts_ms >= start_ms AND ts_ms < start_ms + {iv})) AS figures FROM periods) "
    "SELECT start_ms, "
    "(SELECT yes_price FROM trades WHERE ticker = {ticker} AND ts_ms >= start_ms "
    "ORDER BY ts_ms, arrival LIMIT 1), "
    "(SELECT yes_price FROM trades WHERE ticker = {ticker} AND ts_ms < start_ms + {iv} "
    "ORDER BY ts_ms DESC, arrival DESC LIMIT 1), "
    "figures FROM figures WHERE json_extract(figures, '$[4]') > 0 ORDER BY start_ms"
)
_NEXT_TEMPLATE = "SELECT MIN(ts_ms) FROM trades WHERE ticker = {ticker} AND ts_ms >= {end}"
_PERIOD_TRADES_TEMPLATE = (
    "SELECT trade_id, ticker, yes_price, count, taker_side, ts_ms FROM trades "
    "WHERE ticker = {ticker} AND ts_ms >= {start} AND ts_ms < {end}"
)


# Export pages in (ts_ms, arrival) order after a cursor; the $ floor is applied again in Python
# where SQL could not compute a trade's $ volume.
_EXPORT_TEMPLATE = (
    "SELECT trade_id, ticker, yes_price, count, taker_side, ts_ms, arrival FROM trades "
    "WHERE {market}(ts_ms, arrival) > ({after_ts}, {after_arrival}) AND ts_ms < {end} "
    f"AND ({USD_SQL} IS NULL OR {USD_SQL} >= {{min_usd}}) "
    "ORDER BY ts_ms, arrival LIMIT {limit}"
)


def _named(template: str, style: str, usd_sum: str = "SUM(usd)") -> str:
    names = ("iv", "ticker", "start", "end", "after_ts", "after_arrival", "min_usd", "limit")
    params = {name: style.format(name) for name in names}
    return template.format(usd_sum=usd_sum, market=f"ticker = {params['ticker']} AND ", **params)


CANDLES_SQLITE = _named(_CANDLES_SQLITE_TEMPLATE, ":{}")
#: For a page whose sum overflows SQLite's 64-bit integers: every period is summed in Python.
CANDLES_SQLITE_NO_SUM = _named(_CANDLES_SQLITE_TEMPLATE, ":{}", usd_sum="NULL")
CANDLES_POSTGRES = _named(_CANDLES_TEMPLATE, "%({})s")
NEXT_SQLITE = _named(_NEXT_TEMPLATE, ":{}")
NEXT_POSTGRES = _named(_NEXT_TEMPLATE, "%({})s")
PERIOD_TRADES_SQLITE = _named(_PERIOD_TRADES_TEMPLATE, ":{}")
PERIOD_TRADES_POSTGRES = _named(_PERIOD_TRADES_TEMPLATE, "%({})s")
#: One market's trades, and every market's (the tape's export).
EXPORT_MARKET_SQLITE = _named(_EXPORT_TEMPLATE, ":{}")
EXPORT_MARKET_POSTGRES = _named(_EXPORT_TEMPLATE, "%({})s")
EXPORT_ALL_SQLITE = _named(_EXPORT_TEMPLATE.replace("{market}", ""), ":{}")
EXPORT_ALL_POSTGRES = _named(_EXPORT_TEMPLATE.replace("{market}", ""), "%({})s")

#: (start_ms, open, high, low, close, usd or None, trades whose usd SQL computed, trades,
#: time of the last trade)
CandleRow = Sequence[int | None]


def candles_of(rows: Sequence[CandleRow], exact_usd: Callable[[int], int]) -> list[Candle]:
    """Candles from the SQL's rows. A period with a trade whose $ volume SQL could not compute
    in 64 bits (``USD_SQL``) is summed again, exactly, by ``exact_usd(start_ms)``."""
    candles = []
    for start_ms, open_, high, low, close, usd, usd_known, trades, last_ms in rows:
        assert start_ms is not None and open_ is not None and high is not None and low is not None
        assert close is not None and usd_known is not None and trades is not None and last_ms is not None
        exact = exact_usd(int(start_ms)) if usd is None or usd_known < trades else int(usd)
        candles.append(
            Candle(
                int(start_ms), int(open_), int(high), int(low), int(close), exact, int(trades), int(last_ms)
            )
        )
    return candles


def sqlite_candle_row(row: Sequence[Any]) -> CandleRow:
    """A row of ``CANDLES_SQLITE`` (start, open, close, JSON figures) as a ``CandleRow``."""
    start_ms, open_, close, figures = row
    high, low, usd, usd_known, trades, last_ms = json.loads(figures)
    return (start_ms, open_, high, low, close, usd, usd_known, trades, last_ms)


def usd_of(trades: Iterable[Trade]) -> int:
    return sum(trade.usd for trade in trades)

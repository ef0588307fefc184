"""The pure parts of the history API: CSV rows of trades, export file names, the tape's filter.

An export's CSV has one header row, then a row per trade: exact decimal strings, the trade time
both in ISO 8601 UTC (to the millisecond) and in Unix ms.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import attrs

from flowboard.errors import BadRequest
from flowboard.model import (
    COUNT_DECIMALS,
    PRICE_DECIMALS,
    USD_DECIMALS,
    USD_SCALE,
    MarketMeta,
    Trade,
    to_units,
    units_text,
)

CSV_HEADER = (
    "trade_id",
    "time_utc",
    "ts_ms",
    "ticker",
    "taker_side",
    "yes_price",
    "no_price",
    "count",
    "usd_volume",
)

#: A dollar amount as a client writes it: digits, at most one point, no sign or exponent.
#: The largest $ amount a filter may name, in USD units: SQL's 64-bit integers hold no more.
MAX_USD_UNITS = 2**63 - 1
_DOLLARS = re.compile(r"[0-9]{1,15}(\.[0-9]{0,8})?|\.[0-9]{1,8}")
#: What may stand in a file name taken from a ticker.
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def iso_utc_ms(ts_ms: int) -> str:
    """``2026-11-29T20:11:59.123Z``, always to the millisecond (a column of a CSV keeps one
    width), in integer arithmetic so that no float rounds a millisecond."""
    seconds, millis = divmod(ts_ms, 1000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def csv_text(rows: Sequence[Sequence[str | int]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


def csv_row(trade: Trade) -> tuple[str | int, ...]:
    return (
        trade.trade_id,
        iso_utc_ms(trade.ts_ms),
        trade.ts_ms,
        trade.ticker,
        trade.taker_side,
        units_text(trade.yes_price, PRICE_DECIMALS, 4),
        units_text(trade.no_price, PRICE_DECIMALS, 4),
        units_text(trade.count, COUNT_DECIMALS, 2),
        units_text(trade.usd, USD_DECIMALS, 6),
    )


def export_filename(what: str, now_ms: int) -> str:
    """``flowboard-KXBTCD-25DEC-T101999.99-20261129T201159Z.csv``: the market (or ``trades``)
    and when it was exported, in characters every file system takes."""
    stamp = f"{datetime.fromtimestamp(now_ms // 1000, UTC):%Y%m%dT%H%M%SZ}"
    return f"flowboard-{_UNSAFE_FILE_CHARS.sub('_', what)[:80]}-{stamp}.csv"


def dollars_to_usd_units(name: str, text: str) -> int:
    """A ``min_usd``-style parameter ("1000", "0.5") as exact USD units, or BadRequest."""
    value: Decimal | None
    try:
        value = Decimal(text) if _DOLLARS.fullmatch(text) else None
    except InvalidOperation:
        value = None
    units = None if value is None else to_units(value, USD_DECIMALS)
    if units is None:
        raise BadRequest(f"{name} must be a dollar amount such as 1000 or 0.50, got {text[:40]!r}")
    if units > MAX_USD_UNITS:
        # The databases compare in 64-bit integers; no trade comes near this.
        raise BadRequest(f"{name} must be at most {MAX_USD_UNITS // USD_SCALE:,} dollars, got {text[:40]!r}")
    return units


@attrs.frozen
class TapeFilter:
    """The tape's filter on the page (web/tape.js): text in the ticker or title (any case), one
    category, a $ floor."""

    text: str = ""
    category: str = ""
    min_usd: int = 0

    @property
    def by_market(self) -> bool:
        return bool(self.text or self.category)

    def market_passes(self, ticker: str, meta: MarketMeta | None) -> bool:
        """Whether a market passes the text and category parts; ``meta`` None: not known here."""
        title = meta.title if meta is not None else ""
        category = meta.category if meta is not None else ""
        if self.category and category != self.category:
            return False
        text = self.text.lower()
        return not text or text in ticker.lower() or text in title.lower()


def market_check(
    tape_filter: TapeFilter, meta_of: Callable[[str], MarketMeta | None]
) -> Callable[[str], bool]:
    """``tape_filter``'s market test, answered once per ticker."""
    answers: dict[str, bool] = {}

    def passes(ticker: str) -> bool:
        answer = answers.get(ticker)
        if answer is None:
            answer = answers[ticker] = tape_filter.market_passes(ticker, meta_of(ticker))
        return answer

    return passes

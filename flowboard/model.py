"""The records that flow through Flowboard, in exact integer units.

Every money and size figure is an ``int`` in the smallest unit Flowboard keeps, so
sums are exact and the wire can send them without decimals:

- prices in units of $0.000001 (``PRICE_DECIMALS``): Kalshi quotes 4 decimals
  (``"0.3600"``) and its spec allows up to 6 (``"0.36505"``); some markets tick at
  $0.001 — never rounded to cents;
- counts (contracts) in hundredths (``COUNT_DECIMALS``): ``count_fp`` has 2 decimals;
- dollar volume in units of $0.00000001 (``USD_DECIMALS`` = 6 + 2): price x count, so the
  product of any price and any count is a whole number of units, exact.

The conversion from Kalshi's decimal strings happens once, at the edge
(``flowboard.ingest.kalshi_format``); nothing downstream sees a float.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import attrs

PRICE_DECIMALS = 6
COUNT_DECIMALS = 2
USD_DECIMALS = PRICE_DECIMALS + COUNT_DECIMALS

PRICE_SCALE: int = 10**PRICE_DECIMALS  # annotated: int ** int is typed Any (a negative power is a float)
COUNT_SCALE: int = 10**COUNT_DECIMALS
USD_SCALE: int = 10**USD_DECIMALS

#: $1.00 in price units: yes price + no price == ONE_DOLLAR exactly.
ONE_DOLLAR = PRICE_SCALE

Side = Literal["yes", "no"]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def wall_clock_ms() -> int:
    """The system clock, Unix milliseconds: the time of a live process (tests pass their own)."""
    return time.time_ns() // 1_000_000


def iso_utc(ms: int | None) -> str | None:
    """Unix milliseconds as ISO 8601 in UTC (``1970-01-01T00:00:00Z``); None stays None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@attrs.frozen(slots=True)
class Trade:
    """One executed trade, normalised from any Kalshi format."""

    trade_id: str
    ticker: str
    yes_price: int  # price units ($0.000001)
    count: int  # hundredths of a contract
    taker_side: Side
    ts_ms: int  # trade time, Unix milliseconds (UTC)

    @property
    def no_price(self) -> int:
        return ONE_DOLLAR - self.yes_price

    @property
    def taker_price(self) -> int:
        """The price the taker paid: what a trade's $ volume is measured at."""
        return self.yes_price if self.taker_side == "yes" else ONE_DOLLAR - self.yes_price

    @property
    def usd(self) -> int:
        """Premium paid, count x taker price, in $0.00000001."""
        return self.count * self.taker_price


@attrs.frozen(slots=True)
class MarketMeta:
    """What a viewer needs to recognise a market; all optional until fetched."""

    ticker: str
    title: str = ""
    category: str = ""
    close_ts_ms: int | None = None  # Unix ms; None when unknown
    event_ticker: str = ""
    series_ticker: str = ""
    open_interest: int | None = None  # contracts held open, in hundredths; None when unknown
    liquidity: int | None = None  # dollars, in USD units (Kalshi's liquidity_dollars); None when unknown
    # Kalshi's multivariate-event collection of a combination ("parlay") market; "" for others.
    mve_collection_ticker: str = ""


#: Longest ticker or trade id taken from a feed or named in a request (Kalshi's are far shorter).
MAX_NAME_CHARS = 200


#: Kalshi's auto-generated combination ("parlay") markets: tickers in its multivariate-event series.
PARLAY_TICKER_PREFIX = "KXMVE"


def is_parlay(ticker: str, meta: MarketMeta | None = None) -> bool:
    """Whether a market is a combination ("parlay") market, whose size is structural noise in
    rankings: its ticker says so, or its metadata names a multivariate-event collection."""
    return ticker.startswith(PARLAY_TICKER_PREFIX) or (meta is not None and meta.mve_collection_ticker != "")


def series_of(ticker: str) -> str:
    """Kalshi's series is the ticker up to its first ``-``."""
    return ticker.split("-", 1)[0]


def to_units(value: Decimal, decimals: int) -> int | None:
    """``value`` as an integer count of 10**-decimals, or None if it is finer than that."""
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        return None
    return int(scaled)


def from_units(value: int, decimals: int) -> Decimal:
    """The exact decimal an integer unit count stands for."""
    return Decimal(value).scaleb(-decimals)


def units_text(value: int, decimals: int, min_decimals: int) -> str:
    """The exact decimal string of ``value`` units of 10**-decimals, with as many decimals as
    it needs but at least ``min_decimals``: ``units_text(360000, 6, 4) == "0.3600"``,
    ``units_text(365050, 6, 4) == "0.36505"``."""
    needed = decimals
    while needed > min_decimals and value % 10 ** (decimals - needed + 1) == 0:
        needed -= 1
    return f"{from_units(value, decimals):.{needed}f}"

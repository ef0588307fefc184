"""The store's schema as numbered migrations, applied in order at start-up.

The database records the versions it has in ``schema_version``; opening a store applies the
missing ones in one transaction, so opening twice is harmless. A migration is a list of SQL
statements per dialect; most are the same text on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs

from flowboard.errors import StoreError

from ._alerts import create_alerts

Dialect = Literal["sqlite", "postgres"]

CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)"
)
CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_version"


@attrs.frozen
class Migration:
    version: int
    summary: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


def _trades_and_markets(text_type: str) -> tuple[str, ...]:
    # Integers in the model's exact units (see flowboard.model). The empty trade id is refused so
    # that ("", ts) can serve as the cursor that sorts before every trade at ts.
    return (
        f"""CREATE TABLE trades (
            trade_id   {text_type} PRIMARY KEY CHECK (trade_id <> ''),
            ticker     {text_type} NOT NULL,
            yes_price  BIGINT NOT NULL,
            count      BIGINT NOT NULL,
            taker_side TEXT NOT NULL CHECK (taker_side IN ('yes', 'no')),
            ts_ms      BIGINT NOT NULL
        )""",
        "CREATE INDEX trades_by_time ON trades (ts_ms, trade_id)",
        "CREATE INDEX trades_by_market_time ON trades (ticker, ts_ms, trade_id)",
        f"""CREATE TABLE markets (
            ticker        {text_type} PRIMARY KEY,
            title         TEXT NOT NULL,
            category      TEXT NOT NULL,
            close_ts_ms   BIGINT,
            event_ticker  TEXT NOT NULL,
            series_ticker TEXT NOT NULL
        )""",
    )


def _arrival_order(existing_arrivals: str) -> tuple[str, ...]:
    # Arrival numbers start at 1: (ts, 0) is the cursor before every trade at ts.
    return (
        "ALTER TABLE trades ADD COLUMN arrival BIGINT NOT NULL DEFAULT 0",
        f"UPDATE trades SET arrival = {existing_arrivals}",
        "DROP INDEX trades_by_time",
        "DROP INDEX trades_by_market_time",
        "CREATE INDEX trades_by_time ON trades (ts_ms, arrival)",
        "CREATE INDEX trades_by_market_time ON trades (ticker, ts_ms, arrival)",
    )


# Exact: every stored price was a whole number of $0.0001.
_PRICES_TO_MICRODOLLARS = "UPDATE trades SET yes_price = yes_price * 100"

_BOOK_FIGURES = (
    "ALTER TABLE markets ADD COLUMN open_interest BIGINT",
    "ALTER TABLE markets ADD COLUMN liquidity BIGINT",
)

# The market index carries what a candle reads (price, count, side), so a busy market's history
# is read from the index alone (bench.candles_bench, 7 days of 1h candles among a million trades
# on SQLite: 107 -> 53 ms with the per-period query); it replaces the narrower index, which is a
# prefix of it.
_MARKET_HISTORY_INDEX = (
    "DROP INDEX trades_by_market_time",
    "CREATE INDEX trades_by_market_time ON trades (ticker, ts_ms, arrival, yes_price, count, taker_side)",
)

# Existing rows were stored before the field was read: "" until their metadata is fetched again.
_PARLAY_COLLECTION = ("ALTER TABLE markets ADD COLUMN mve_collection_ticker TEXT NOT NULL DEFAULT ''",)

_SOURCE_STATE = "CREATE TABLE source_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        summary="trades keyed by trade_id, market metadata",
        sqlite=_trades_and_markets("TEXT"),
        # Byte order, like SQLite's BINARY, so both backends page through equal timestamps the
        # same way whatever the database's locale.
        postgres=_trades_and_markets('TEXT COLLATE "C"'),
    ),
    Migration(
        version=2,
        summary="what a source needs to carry on after a restart (the simulator's market anchor)",
        sqlite=(_SOURCE_STATE,),
        postgres=(_SOURCE_STATE,),
    ),
    Migration(
        version=3,
        summary="the arrival order of trades, which orders the trades of one millisecond",
        # SQLite's rowids are the order earlier versions inserted trades in, which was their
        # arrival order; PostgreSQL kept no such order, so its earlier trades keep the order
        # they were read in until now, by trade id.
        sqlite=_arrival_order("rowid"),
        postgres=_arrival_order(
            "numbered.arrival FROM (SELECT trade_id, row_number() OVER (ORDER BY ts_ms, trade_id) AS arrival "
            "FROM trades) AS numbered WHERE trades.trade_id = numbered.trade_id"
        ),
    ),
    Migration(
        version=4,
        summary="prices in $0.000001 (were $0.0001): Kalshi's spec allows 6 decimals",
        sqlite=(_PRICES_TO_MICRODOLLARS,),
        postgres=(_PRICES_TO_MICRODOLLARS,),
    ),
    Migration(
        version=5,
        summary="market open interest (hundredths of a contract) and liquidity (USD units), when known",
        sqlite=_BOOK_FIGURES,
        postgres=_BOOK_FIGURES,
    ),
    Migration(
        version=6,
        summary="a combination (parlay) market's collection (Kalshi's mve_collection_ticker)",
        sqlite=_PARLAY_COLLECTION,
        postgres=_PARLAY_COLLECTION,
    ),
    Migration(
        version=7,
        summary="the market index covers a market's prices, counts and sides, for its candles",
        sqlite=_MARKET_HISTORY_INDEX,
        postgres=_MARKET_HISTORY_INDEX,
    ),
    Migration(
        version=8,
        summary="alerts (whale and accumulation), so that a restart shows them and never raises them again",
        sqlite=create_alerts("TEXT"),
        postgres=create_alerts('TEXT COLLATE "C"'),
    ),
)


def pending_migrations(current_version: int, migrations: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    """The migrations a database at ``current_version`` still needs, oldest first."""
    latest = migrations[-1].version if migrations else 0
    if current_version > latest:
        raise StoreError(
            f"the database has schema version {current_version}, newer than this Flowboard knows "
            f"({latest}); upgrade Flowboard or point --db at another database"
        )
    return [migration for migration in migrations if migration.version > current_version]

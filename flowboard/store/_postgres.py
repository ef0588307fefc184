"""The store on PostgreSQL: psycopg 3's sync API with a psycopg-pool ``ConnectionPool``, used
from trio worker threads (psycopg's async API is asyncio-only)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import starmap
from typing import Any

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from flowboard.aggregate.alerts import Alert
from flowboard.errors import StoreError, TradesRejected
from flowboard.model import MINUTE_MS, MarketMeta, Trade, wall_clock_ms

from ._alerts import alert_of, alert_row, delete_alerts_sql, insert_alert_sql, latest_alerts_sql
from ._config import PostgresTarget, StoreConfig
from ._history import (
    CANDLES_POSTGRES,
    EXPORT_ALL_POSTGRES,
    EXPORT_MARKET_POSTGRES,
    NEXT_POSTGRES,
    PERIOD_TRADES_POSTGRES,
    CandlePage,
    candles_of,
    page_span,
    period_start,
    usd_of,
)
from ._lock import PostgresWriterLock
from ._pending import Cursor, PageCursor, cursor_after, meta_row, trades_of
from ._schema import CREATE_VERSION_TABLE, CURRENT_VERSION, pending_migrations
from ._store import BatchedStore
from ._summary import FLOW_SQL, USD_SQL, StoredSummary, merge_recent, summarize_minutes

_TRADE_COLUMNS = "trade_id, ticker, yes_price, count, taker_side, ts_ms"
# What orders the trades of one millisecond: the order they arrived in (``_schema`` v3).
_STORED_COLUMNS = f"{_TRADE_COLUMNS}, arrival"
_META_COLUMNS = (
    "ticker, title, category, close_ts_ms, event_ticker, series_ticker, open_interest, liquidity, "
    "mve_collection_ticker"
)

# One statement per batch: the columns travel as seven arrays instead of a round trip per row.
_INSERT_TRADES = (
    f"INSERT INTO trades ({_STORED_COLUMNS}) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::bigint[], "
    "%s::bigint[]) ON CONFLICT (trade_id) DO NOTHING"
)
_DELETE_OLDEST = (
    "DELETE FROM trades WHERE trade_id IN (SELECT trade_id FROM trades WHERE ts_ms < %s LIMIT %s)"
)
_LAST_ARRIVAL = "SELECT COALESCE(MAX(arrival), 0) FROM trades"
# The page ends at (before, the arrival of before_id); without that trade, below the millisecond.
_MARKET_PAGE = (
    f"SELECT {_TRADE_COLUMNS} FROM trades WHERE ticker = %s AND (ts_ms, arrival) < "
    "(%s, COALESCE((SELECT arrival FROM trades WHERE trade_id = %s), 0)) "
    "ORDER BY ts_ms DESC, arrival DESC LIMIT %s"
)
_TRADES_AFTER = (
    f"SELECT {_STORED_COLUMNS} FROM trades WHERE (ts_ms, arrival) > (%s, %s) ORDER BY ts_ms, arrival LIMIT %s"
)
_SUMMARY_ROWS = (
    f"SELECT ts_ms, trade_id, ticker, {USD_SQL}, count, {FLOW_SQL} FROM trades WHERE ts_ms >= %s "
    "ORDER BY ts_ms, arrival"
)
_TRADES_SINCE = f"SELECT {_STORED_COLUMNS} FROM trades WHERE ts_ms >= %s"
_MINUTE_TRADES = f"SELECT {_TRADE_COLUMNS} FROM trades WHERE ts_ms >= %s AND ts_ms < %s"
_LATEST = f"SELECT {_STORED_COLUMNS} FROM trades WHERE ts_ms >= %s ORDER BY ts_ms DESC, arrival DESC LIMIT %s"
# Each market's latest trades in one round trip, each an index range read.
_MARKETS_LATEST = (
    f"SELECT latest.* FROM unnest(%s::text[]) AS market(ticker) CROSS JOIN LATERAL ("
    f"SELECT {_STORED_COLUMNS} FROM trades WHERE trades.ticker = market.ticker AND ts_ms >= %s "
    "ORDER BY ts_ms DESC, arrival DESC LIMIT %s) AS latest"
)
_UPSERT_META = (
    f"INSERT INTO markets ({_META_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (ticker) DO UPDATE SET "
    "title = excluded.title, category = excluded.category, close_ts_ms = excluded.close_ts_ms, "
    "event_ticker = excluded.event_ticker, series_ticker = excluded.series_ticker, "
    "open_interest = excluded.open_interest, liquidity = excluded.liquidity, "
    "mve_collection_ticker = excluded.mve_collection_ticker"
)
_UPSERT_SOURCE_STATE = (
    "INSERT INTO source_state (name, value) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
# Any constant shared by every Flowboard process: concurrent start-ups migrate one at a time.
_MIGRATION_LOCK_KEY = 0x466C6F77  # "Flow"


class PostgresDatabase:
    def __init__(self, target: PostgresTarget, config: StoreConfig, *, exclusive: bool = True) -> None:
        """``exclusive``: hold the writer lock (``_lock``) while open; an edge, which only reads, does not."""
        self._description = target.description
        self._exclusive = exclusive
        self._last_arrival = 0  # of the latest stored trade; read by migrate()
        self._lock: PostgresWriterLock | None = None
        self._lock_timeout_ms = round(config.lock_timeout_s * 1000)
        self._connect_timeout_s = config.connect_timeout_s
        self._chunk_rows = config.load_chunk_trades
        params = conninfo_to_dict(target.conninfo)
        params.setdefault("application_name", "flowboard-store")
        # libpq counts whole seconds and treats values below 2 as 2.
        params.setdefault("connect_timeout", max(2, math.ceil(config.connect_timeout_s)))
        self._conninfo = make_conninfo("", **params)
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            # The readers, the writer and the late-trade lookup.
            max_size=config.postgres_readers + 2,
            open=False,
            timeout=config.connect_timeout_s,
            configure=self._configure,
            # A connection the server dropped (restart, pg_terminate_backend) is replaced before use
            # instead of failing the batch it was handed to.
            check=ConnectionPool.check_connection,
            name="flowboard-store",
        )

    def open(self) -> None:
        """Connect, or raise StoreError within ``connect_timeout_s``."""
        try:
            # One direct attempt first: when it fails it says why (refused, bad password...),
            # where the pool would only report a timeout.
            psycopg.connect(self._conninfo).close()
        except psycopg.Error as error:
            self._pool.close()
            raise StoreError(f"PostgreSQL not reachable at {self._description}: {error}") from error
        try:
            if self._exclusive:
                self._lock = PostgresWriterLock(self._conninfo, self._description)
            self._pool.open(wait=True, timeout=self._connect_timeout_s)
        except psycopg.Error as error:
            self.close()
            raise StoreError(f"PostgreSQL not reachable at {self._description}: {error}") from error
        except BaseException:
            self.close()
            raise

    def _configure(self, connection: psycopg.Connection[TupleRow]) -> None:
        connection.execute("SELECT set_config('lock_timeout', %s, false)", (f"{self._lock_timeout_ms}ms",))
        connection.commit()

    @contextmanager
    def _transaction(self, action: str) -> Iterator[psycopg.Connection[TupleRow]]:
        """A pooled connection whose work commits on success and rolls back on error."""
        try:
            with self._pool.connection() as connection:
                yield connection
        except (psycopg.IntegrityError, psycopg.DataError) as error:
            raise TradesRejected(f"PostgreSQL {self._description}: {action} refused: {error}") from error
        except psycopg.Error as error:
            raise StoreError(f"PostgreSQL {self._description}: {action} failed: {error}") from error

    def migrate(self) -> int:
        with self._transaction("migrating the schema") as connection:
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            connection.execute(CREATE_VERSION_TABLE)
            version = _scalar_int(connection, CURRENT_VERSION) or 0
            for migration in pending_migrations(version):
                for statement in migration.statements("postgres"):
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO schema_version VALUES (%s, %s)", (migration.version, wall_clock_ms())
                )
                version = migration.version
            self._last_arrival = _scalar_int(connection, _LAST_ARRIVAL) or 0
        return version

    def insert_trades(self, trades: Sequence[Trade]) -> None:
        columns = (
            [t.trade_id for t in trades],
            [t.ticker for t in trades],
            [t.yes_price for t in trades],
            [t.count for t in trades],
            [t.taker_side for t in trades],
            [t.ts_ms for t in trades],
            # Numbered in offer order, which is the order the aggregator took them in.
            list(range(self._last_arrival + 1, self._last_arrival + 1 + len(trades))),
        )
        with self._transaction("writing trades") as connection:
            connection.execute(_INSERT_TRADES, columns)
        self._last_arrival += len(trades)

    def delete_trades_before(self, cutoff_ms: int, max_rows: int) -> int:
        with self._transaction("deleting old trades") as connection:
            # Alerts go with the trades that raised them (few: no batching needed).
            connection.execute(delete_alerts_sql("%s"), (cutoff_ms,))
            return connection.execute(_DELETE_OLDEST, (cutoff_ms, max_rows)).rowcount

    def market_trades_before(self, ticker: str, before: PageCursor, limit: int) -> list[Trade]:
        with self._transaction("reading a market's trades") as connection:
            rows = connection.execute(_MARKET_PAGE, (ticker, *before, limit)).fetchall()
        return list(starmap(Trade, rows))

    def trades_after(self, after: Cursor, limit: int) -> tuple[list[Trade], Cursor]:
        with self._transaction("loading trades") as connection:
            rows = connection.execute(_TRADES_AFTER, (*after, limit)).fetchall()
        return trades_of(rows), cursor_after(rows, after)

    def market_candles(self, ticker: str, interval_ms: int, since_ms: int, limit: int) -> CandlePage:
        start, end = page_span(since_ms, interval_ms, limit)
        params = {"ticker": ticker, "iv": interval_ms, "start": start, "end": end}
        with self._transaction("reading a market's candles") as connection:
            # One snapshot for the candles and the next page's start.
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

            def exact_usd(period_ms: int) -> int:
                window = {"ticker": ticker, "start": period_ms, "end": period_ms + interval_ms}
                return usd_of(starmap(Trade, connection.execute(PERIOD_TRADES_POSTGRES, window).fetchall()))

            candles = candles_of(connection.execute(CANDLES_POSTGRES, params).fetchall(), exact_usd)
            next_ms = _scalar_int(connection, NEXT_POSTGRES, params)
        return CandlePage(candles, None if next_ms is None else period_start(next_ms, interval_ms))

    def trades_between(
        self, ticker: str | None, after: Cursor, until_ms: int, min_usd: int, limit: int
    ) -> tuple[list[Trade], Cursor]:
        params = {
            "ticker": ticker,
            "after_ts": after[0],
            "after_arrival": after[1],
            "end": until_ms,
            "min_usd": min_usd,
            "limit": limit,
        }
        query = EXPORT_ALL_POSTGRES if ticker is None else EXPORT_MARKET_POSTGRES
        with self._transaction("exporting trades") as connection:
            rows = connection.execute(query, params).fetchall()
        return [t for t in trades_of(rows) if t.usd >= min_usd], cursor_after(rows, after)

    def summary_since(
        self, since_ms: int, ids_since_ms: int, recent_since_ms: int, tape_size: int, per_market: int
    ) -> StoredSummary:
        with self._transaction("summarising the stored trades") as connection:
            # One snapshot for every query.
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

            def minute_usd(minute_ms: int) -> int:
                rows = connection.execute(_MINUTE_TRADES, (minute_ms, minute_ms + MINUTE_MS)).fetchall()
                return sum(trade.usd for trade in starmap(Trade, rows))

            # A server-side cursor: the rows come a chunk at a time, not a day of them at once.
            with connection.cursor(name="summary_rows", binary=True) as cursor:
                cursor.execute(_SUMMARY_ROWS, (since_ms,))
                chunks = iter(partial(cursor.fetchmany, self._chunk_rows), [])
                minutes = summarize_minutes(chunks, minute_usd, ids_since_ms)
            window = connection.execute(_TRADES_SINCE, (max(since_ms, recent_since_ms),)).fetchall()
            tape = connection.execute(_LATEST, (since_ms, tape_size)).fetchall()
            tickers = list(dict.fromkeys(ticker for minute in minutes for ticker in minute.tickers))
            markets = connection.execute(_MARKETS_LATEST, (tickers, since_ms, per_market)).fetchall()
        recent = merge_recent(window, tape, markets)
        return StoredSummary(minutes, recent)

    def last_trade_ms(self) -> int | None:
        with self._transaction("reading the last trade time") as connection:
            return _scalar_int(connection, "SELECT MAX(ts_ms) FROM trades")

    def trade_ids_since(self, since_ms: int) -> set[str]:
        with self._transaction("reading trade ids") as connection:
            rows = connection.execute("SELECT trade_id FROM trades WHERE ts_ms >= %s", (since_ms,)).fetchall()
        return {str(trade_id) for (trade_id,) in rows}

    def stored_trade_ids(self, trade_ids: Sequence[str]) -> set[str]:
        with self._transaction("looking trade ids up") as connection:
            rows = connection.execute(
                "SELECT trade_id FROM trades WHERE trade_id = ANY(%s)", (list(trade_ids),)
            ).fetchall()
        return {str(trade_id) for (trade_id,) in rows}

    def save_meta(self, metas: Sequence[MarketMeta]) -> None:
        rows = [meta_row(m) for m in metas]
        with self._transaction("saving market metadata") as connection, connection.cursor() as cursor:
            cursor.executemany(_UPSERT_META, rows)

    def load_meta(self, tickers: Sequence[str] | None) -> list[MarketMeta]:
        with self._transaction("loading market metadata") as connection:
            if tickers is None:
                rows = connection.execute(f"SELECT {_META_COLUMNS} FROM markets ORDER BY ticker").fetchall()
            else:
                rows = connection.execute(
                    f"SELECT {_META_COLUMNS} FROM markets WHERE ticker = ANY(%s) ORDER BY ticker",
                    (list(tickers),),
                ).fetchall()
        return list(starmap(MarketMeta, rows))

    def insert_alerts(self, alerts: Sequence[Alert]) -> None:
        rows = [alert_row(a) for a in alerts]
        with self._transaction("writing alerts") as connection, connection.cursor() as cursor:
            cursor.executemany(insert_alert_sql("%s"), rows)

    def latest_alerts(self, limit: int) -> list[Alert]:
        with self._transaction("loading alerts") as connection:
            rows = connection.execute(latest_alerts_sql("%s"), (limit,)).fetchall()
        return [alert_of(row) for row in rows]

    def load_source_state(self, name: str) -> str | None:
        with self._transaction("loading the source's state") as connection:
            row = connection.execute("SELECT value FROM source_state WHERE name = %s", (name,)).fetchone()
        return None if row is None else str(row[0])

    def save_source_state(self, name: str, value: str) -> None:
        with self._transaction("saving the source's state") as connection:
            connection.execute(_UPSERT_SOURCE_STATE, (name, value))

    def close(self) -> None:
        try:
            self._pool.close()
        finally:
            if self._lock is not None:
                self._lock.release()


def _scalar_int(
    connection: psycopg.Connection[TupleRow], query: str, params: dict[str, Any] | None = None
) -> int | None:
    row = connection.execute(query, params).fetchone()
    return None if row is None or row[0] is None else int(row[0])


class PostgresStore(BatchedStore):
    """The store in a PostgreSQL database shared by a team."""

    def __init__(self, database: PostgresDatabase, config: StoreConfig) -> None:
        super().__init__(
            database,
            config,
            write_limiter=trio.CapacityLimiter(1),
            read_limiter=trio.CapacityLimiter(config.postgres_readers),
        )

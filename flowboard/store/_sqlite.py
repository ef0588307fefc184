"""The store on SQLite: stdlib ``sqlite3`` in WAL mode, one writer connection and two readers.

Each connection is used by one worker thread at a time (a capacity limiter of 1 each), so
``check_same_thread=False`` is safe. WAL lets reads run while a batch commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import starmap
from pathlib import Path

import trio

from flowboard.aggregate.alerts import Alert
from flowboard.errors import ConfigError, StoreError, TradesRejected
from flowboard.model import MINUTE_MS, MarketMeta, Trade, wall_clock_ms

from ._alerts import alert_of, alert_row, delete_alerts_sql, insert_alert_sql, latest_alerts_sql
from ._config import StoreConfig
from ._history import (
    CANDLES_SQLITE,
    CANDLES_SQLITE_NO_SUM,
    EXPORT_ALL_SQLITE,
    EXPORT_MARKET_SQLITE,
    NEXT_SQLITE,
    PERIOD_TRADES_SQLITE,
    CandlePage,
    candles_of,
    page_span,
    period_start,
    sqlite_candle_row,
    usd_of,
)
from ._lock import SqliteWriterLock
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
# Below SQLite's limit on bound parameters (999 before 3.32).
_IDS_PER_LOOKUP = 500

_INSERT_TRADE = (
    f"INSERT INTO trades ({_STORED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (trade_id) DO NOTHING"
)
_DELETE_OLDEST = "DELETE FROM trades WHERE rowid IN (SELECT rowid FROM trades WHERE ts_ms < ? LIMIT ?)"
_LAST_ARRIVAL = "SELECT COALESCE(MAX(arrival), 0) FROM trades"
# The page ends at (before, the arrival of before_id); without that trade, below the millisecond.
_MARKET_PAGE = (
    f"SELECT {_TRADE_COLUMNS} FROM trades WHERE ticker = ? AND (ts_ms, arrival) < "
    "(?, COALESCE((SELECT arrival FROM trades WHERE trade_id = ?), 0)) "
    "ORDER BY ts_ms DESC, arrival DESC LIMIT ?"
)
_TRADES_AFTER = (
    f"SELECT {_STORED_COLUMNS} FROM trades WHERE (ts_ms, arrival) > (?, ?) ORDER BY ts_ms, arrival LIMIT ?"
)
_SUMMARY_ROWS = (
    f"SELECT ts_ms, trade_id, ticker, {USD_SQL}, count, {FLOW_SQL} FROM trades WHERE ts_ms >= ? "
    "ORDER BY ts_ms, arrival"
)
_TRADES_SINCE = f"SELECT {_STORED_COLUMNS} FROM trades WHERE ts_ms >= ?"
_MINUTE_TRADES = f"SELECT {_TRADE_COLUMNS} FROM trades WHERE ts_ms >= ? AND ts_ms < ?"
_LATEST = f"SELECT {_STORED_COLUMNS} FROM trades WHERE ts_ms >= ? ORDER BY ts_ms DESC, arrival DESC LIMIT ?"
_MARKET_LATEST = (
    f"SELECT {_STORED_COLUMNS} FROM trades WHERE ticker = ? AND ts_ms >= ? "
    "ORDER BY ts_ms DESC, arrival DESC LIMIT ?"
)
_UPSERT_META = (
    f"INSERT INTO markets ({_META_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (ticker) DO UPDATE SET "
    "title = excluded.title, category = excluded.category, close_ts_ms = excluded.close_ts_ms, "
    "event_ticker = excluded.event_ticker, series_ticker = excluded.series_ticker, "
    "open_interest = excluded.open_interest, liquidity = excluded.liquidity, "
    "mve_collection_ticker = excluded.mve_collection_ticker"
)

_UPSERT_SOURCE_STATE = (
    "INSERT INTO source_state (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


@contextmanager
def _as_store_error(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except (sqlite3.IntegrityError, OverflowError) as error:
        # OverflowError: an integer beyond SQLite's 64 bits, refused by the driver.
        raise TradesRejected(f"SQLite {path}: {action} refused: {error}") from error
    except sqlite3.Error as error:
        raise StoreError(f"SQLite {path}: {action} failed: {error}") from error


def _connect(path: Path, config: StoreConfig) -> sqlite3.Connection:
    # isolation_level=None: transactions are opened explicitly, with BEGIN IMMEDIATE for writes.
    # timeout is SQLite's busy timeout: how long a statement waits for another connection's lock.
    return sqlite3.connect(path, timeout=config.lock_timeout_s, isolation_level=None, check_same_thread=False)


class SqliteDatabase:
    def __init__(self, path: Path, config: StoreConfig, *, exclusive: bool = True) -> None:
        """``exclusive``: take the writer lock (``_lock``) first; an edge, which only reads, does not."""
        self._path = path
        self._chunk_rows = config.load_chunk_trades
        self._last_arrival = 0  # of the latest stored trade; read by migrate()
        self._lock = SqliteWriterLock(path) if exclusive else None
        try:
            self._writer = _connect(path, config)
            # Before anything is written (the journal mode rewrites the file's header): a
            # database of a newer Flowboard must be left exactly as it is.
            self._refuse_newer_schema()
            self._writer.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit survives a power cut, not only a crash. It costs one fsync per batch.
            self._writer.execute("PRAGMA synchronous = FULL")
            self._reader = _connect(path, config)
            self._reader.execute("PRAGMA query_only = ON")
            # The late-trade lookup's own: a lookup given up on may still be running on it.
            self._lookup = _connect(path, config)
            self._lookup.execute("PRAGMA query_only = ON")
        except BaseException as error:
            if self._lock is not None:
                self._lock.release()
            if not isinstance(error, sqlite3.Error):
                raise
            raise ConfigError(
                f"--db {path}: cannot open it as a SQLite database ({error}); "
                "check the path and its permissions"
            ) from error

    def _refuse_newer_schema(self) -> None:
        """Raise (pending_migrations' one-line error) if the file's schema is newer than ours;
        reads only."""
        has_versions = self._writer.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if has_versions:
            (version,) = self._writer.execute(CURRENT_VERSION).fetchone()
            pending_migrations(int(version))

    @contextmanager
    def _write_transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with _as_store_error(action, self._path):
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                yield self._writer
                self._writer.execute("COMMIT")
            except BaseException:
                if self._writer.in_transaction:
                    self._writer.rollback()
                raise

    def migrate(self) -> int:
        with self._write_transaction("migrating the schema") as connection:
            connection.execute(CREATE_VERSION_TABLE)
            (version,) = connection.execute(CURRENT_VERSION).fetchone()
            for migration in pending_migrations(version):
                for statement in migration.statements("sqlite"):
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO schema_version VALUES (?, ?)", (migration.version, wall_clock_ms())
                )
                version = migration.version
            (self._last_arrival,) = connection.execute(_LAST_ARRIVAL).fetchone()
        return int(version)

    def insert_trades(self, trades: Sequence[Trade]) -> None:
        # Numbered in offer order, which is the order the aggregator took them in.
        rows = (
            (t.trade_id, t.ticker, t.yes_price, t.count, t.taker_side, t.ts_ms, arrival)
            for arrival, t in enumerate(trades, self._last_arrival + 1)
        )
        with self._write_transaction("writing trades") as connection:
            connection.executemany(_INSERT_TRADE, rows)
        self._last_arrival += len(trades)

    def delete_trades_before(self, cutoff_ms: int, max_rows: int) -> int:
        with self._write_transaction("deleting old trades") as connection:
            # Alerts go with the trades that raised them (few: no batching needed).
            connection.execute(delete_alerts_sql("?"), (cutoff_ms,))
            return connection.execute(_DELETE_OLDEST, (cutoff_ms, max_rows)).rowcount

    def market_trades_before(self, ticker: str, before: PageCursor, limit: int) -> list[Trade]:
        with _as_store_error("reading a market's trades", self._path):
            rows = self._reader.execute(_MARKET_PAGE, (ticker, *before, limit)).fetchall()
        return list(starmap(Trade, rows))

    def trades_after(self, after: Cursor, limit: int) -> tuple[list[Trade], Cursor]:
        with _as_store_error("loading trades", self._path):
            rows = self._reader.execute(_TRADES_AFTER, (*after, limit)).fetchall()
        return trades_of(rows), cursor_after(rows, after)

    def market_candles(self, ticker: str, interval_ms: int, since_ms: int, limit: int) -> CandlePage:
        start, end = page_span(since_ms, interval_ms, limit)
        params = {"ticker": ticker, "iv": interval_ms, "start": start, "end": end}
        reader = self._reader

        def exact_usd(period_ms: int) -> int:
            window = {"ticker": ticker, "start": period_ms, "end": period_ms + interval_ms}
            return usd_of(starmap(Trade, reader.execute(PERIOD_TRADES_SQLITE, window).fetchall()))

        with _as_store_error("reading a market's candles", self._path):
            reader.execute("BEGIN")
            try:
                try:
                    rows = reader.execute(CANDLES_SQLITE, params).fetchall()
                except sqlite3.OperationalError as error:
                    # A period's $ volume beyond 64 bits: SQLite refuses the SUM, Python does not.
                    if "integer overflow" not in str(error):
                        raise
                    rows = reader.execute(CANDLES_SQLITE_NO_SUM, params).fetchall()
                candles = candles_of([sqlite_candle_row(row) for row in rows], exact_usd)
                (next_ms,) = reader.execute(NEXT_SQLITE, params).fetchone()
            finally:
                reader.execute("COMMIT")
        return CandlePage(candles, None if next_ms is None else period_start(int(next_ms), interval_ms))

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
        query = EXPORT_ALL_SQLITE if ticker is None else EXPORT_MARKET_SQLITE
        with _as_store_error("exporting trades", self._path):
            rows = self._reader.execute(query, params).fetchall()
        return [t for t in trades_of(rows) if t.usd >= min_usd], cursor_after(rows, after)

    def summary_since(
        self, since_ms: int, ids_since_ms: int, recent_since_ms: int, tape_size: int, per_market: int
    ) -> StoredSummary:
        reader = self._reader
        with _as_store_error("summarising the stored trades", self._path):
            # One read transaction: every query sees the same snapshot.
            reader.execute("BEGIN")
            try:
                cursor = reader.execute(_SUMMARY_ROWS, (since_ms,))
                chunks = iter(partial(cursor.fetchmany, self._chunk_rows), [])
                minutes = summarize_minutes(chunks, self._minute_usd, ids_since_ms)
                window = reader.execute(_TRADES_SINCE, (max(since_ms, recent_since_ms),)).fetchall()
                tape = reader.execute(_LATEST, (since_ms, tape_size)).fetchall()
                tickers = dict.fromkeys(ticker for minute in minutes for ticker in minute.tickers)
                markets = [
                    row
                    for ticker in tickers
                    for row in reader.execute(_MARKET_LATEST, (ticker, since_ms, per_market)).fetchall()
                ]
            finally:
                reader.execute("COMMIT")
        recent = merge_recent(window, tape, markets)
        return StoredSummary(minutes, recent)

    def _minute_usd(self, minute_ms: int) -> int:
        rows = self._reader.execute(_MINUTE_TRADES, (minute_ms, minute_ms + MINUTE_MS)).fetchall()
        return sum(trade.usd for trade in starmap(Trade, rows))

    def last_trade_ms(self) -> int | None:
        with _as_store_error("reading the last trade time", self._path):
            (latest,) = self._reader.execute("SELECT MAX(ts_ms) FROM trades").fetchone()
        return None if latest is None else int(latest)

    def trade_ids_since(self, since_ms: int) -> set[str]:
        with _as_store_error("reading trade ids", self._path):
            rows = self._reader.execute(
                "SELECT trade_id FROM trades WHERE ts_ms >= ?", (since_ms,)
            ).fetchall()
        return {trade_id for (trade_id,) in rows}

    def stored_trade_ids(self, trade_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with _as_store_error("looking trade ids up", self._path):
            for start in range(0, len(trade_ids), _IDS_PER_LOOKUP):
                chunk = trade_ids[start : start + _IDS_PER_LOOKUP]
                placeholders = ",".join("?" * len(chunk))
                rows = self._lookup.execute(
                    f"SELECT trade_id FROM trades WHERE trade_id IN ({placeholders})", chunk
                ).fetchall()
                found.update(trade_id for (trade_id,) in rows)
        return found

    def save_meta(self, metas: Sequence[MarketMeta]) -> None:
        rows = [meta_row(m) for m in metas]
        with self._write_transaction("saving market metadata") as connection:
            connection.executemany(_UPSERT_META, rows)

    def load_meta(self, tickers: Sequence[str] | None) -> list[MarketMeta]:
        with _as_store_error("loading market metadata", self._path):
            if tickers is None:
                rows = self._reader.execute(f"SELECT {_META_COLUMNS} FROM markets ORDER BY ticker").fetchall()
            else:
                rows = []
                for start in range(0, len(tickers), _IDS_PER_LOOKUP):
                    chunk = tickers[start : start + _IDS_PER_LOOKUP]
                    placeholders = ",".join("?" * len(chunk))
                    rows += self._reader.execute(
                        f"SELECT {_META_COLUMNS} FROM markets WHERE ticker IN ({placeholders})", chunk
                    ).fetchall()
                rows.sort(key=lambda row: row[0])
        return list(starmap(MarketMeta, rows))

    def insert_alerts(self, alerts: Sequence[Alert]) -> None:
        with self._write_transaction("writing alerts") as connection:
            connection.executemany(insert_alert_sql("?"), [alert_row(a) for a in alerts])

    def latest_alerts(self, limit: int) -> list[Alert]:
        with _as_store_error("loading alerts", self._path):
            rows = self._reader.execute(latest_alerts_sql("?"), (limit,)).fetchall()
        return [alert_of(row) for row in rows]

    def load_source_state(self, name: str) -> str | None:
        with _as_store_error("loading the source's state", self._path):
            row = self._reader.execute("SELECT value FROM source_state WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def save_source_state(self, name: str, value: str) -> None:
        with self._write_transaction("saving the source's state") as connection:
            connection.execute(_UPSERT_SOURCE_STATE, (name, value))

    def close(self) -> None:
        try:
            with _as_store_error("closing", self._path):
                self._lookup.close()
                self._reader.close()
                self._writer.close()
        finally:
            if self._lock is not None:
                self._lock.release()


class SqliteStore(BatchedStore):
    """The store in a SQLite file."""

    def __init__(self, database: SqliteDatabase, config: StoreConfig) -> None:
        super().__init__(
            database,
            config,
            write_limiter=trio.CapacityLimiter(1),
            read_limiter=trio.CapacityLimiter(1),
        )

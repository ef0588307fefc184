"""The trade store: every trade kept in SQLite (default) or PostgreSQL, for restarts.

    async with open_store(args.db, config=StoreConfig()) as store:
        summary = await store.load_summary_since(since_ms, ...)  # what a restart rebuilds from
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_writer, store)
            store.offer(trades)                                  # never blocks; bounded, counted

The producer never waits for the database: ``offer`` queues (up to ``queue_max_trades``,
dropping and counting beyond that) and the writer task commits batches, retrying with backoff
while the database is down; ``statistics()`` says how it is doing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import NoReturn

import trio

from ._config import DEFAULT_DB_PATH, PostgresTarget, SqliteTarget, StoreConfig, parse_target
from ._history import CANDLE_INTERVALS_MS, Candle, CandlePage
from ._pending import Dropped, StoreStatistics
from ._postgres import PostgresDatabase, PostgresStore
from ._schema import MIGRATIONS, Migration
from ._sqlite import SqliteDatabase, SqliteStore
from ._store import BatchedStore, Store
from ._summary import StoredSummary

__all__ = [
    "CANDLE_INTERVALS_MS",
    "DEFAULT_DB_PATH",
    "MIGRATIONS",
    "Candle",
    "CandlePage",
    "Dropped",
    "Migration",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "StoreConfig",
    "StoreStatistics",
    "StoredSummary",
    "open_store",
    "serve_writer",
]

_DEFAULT_CONFIG = StoreConfig()


@asynccontextmanager
async def open_store(
    url_or_path: str, *, config: StoreConfig = _DEFAULT_CONFIG, exclusive: bool = True
) -> AsyncIterator[Store]:
    """Open the store ``--db`` names and bring its schema up to date.

    ``exclusive`` (the default): this process is the store's only writer until it closes the
    store (a lock file for SQLite, an advisory lock for PostgreSQL); pass False only for a
    process that never writes trades (an edge).

    Raises ConfigError for a path or URL that cannot work or a store another process holds,
    StoreError when the database is unreachable or refuses the migration.
    """
    target = parse_target(url_or_path)
    store = await _connect(target, config, exclusive)
    try:
        await store.migrate()
        yield store
    finally:
        await store.aclose()


async def _connect(
    target: SqliteTarget | PostgresTarget, config: StoreConfig, exclusive: bool
) -> BatchedStore:
    if isinstance(target, SqliteTarget):
        sqlite_database = await trio.to_thread.run_sync(
            partial(SqliteDatabase, target.path, config, exclusive=exclusive)
        )
        return SqliteStore(sqlite_database, config)
    postgres_database = PostgresDatabase(target, config, exclusive=exclusive)
    await trio.to_thread.run_sync(postgres_database.open)
    return PostgresStore(postgres_database, config)


async def serve_writer(
    store: Store, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> NoReturn:
    """Run the store's writer and retention until cancelled; ready once started (the schema is
    migrated by ``open_store``)."""
    await store.serve_writer(task_status=task_status)

"""The trade store against real databases: every test runs on SQLite (a tmp_path file) and on
PostgreSQL (a fresh schema per test at FLOWBOARD_TEST_POSTGRES_URL).

The writer commits from worker threads, which no test clock can drive, so these tests use the
real clock with intervals of a few milliseconds and poll ``statistics()`` with short waits.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import attrs
import psycopg
import pytest
import trio

from flowboard.errors import ConfigError, StoreError
from flowboard.model import DAY_MS, MarketMeta, Trade, wall_clock_ms
from flowboard.store import MIGRATIONS, Store, StoreConfig, open_store, serve_writer

POSTGRES_URL = os.environ.get("FLOWBOARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SERVICES_REQUIRED = os.environ.get("FLOWBOARD_REQUIRE_SERVICES") == "1"

#: Short enough that a test sees batches, retries and lock timeouts within milliseconds. Retention
#: is far beyond any test timestamp, so only the retention tests see trades expire.
NO_EXPIRY_DAYS = 1_000 * 365
FAST = StoreConfig(
    retention_days=NO_EXPIRY_DAYS,
    batch_interval_s=0.005,
    retry_initial_s=0.005,
    retry_max_s=0.05,
    lock_timeout_s=0.05,
    connect_timeout_s=3,
    shutdown_flush_s=5,
)
BASE_MS = 1_760_000_000_000


def make_trades(
    count: int, *, ticker: str = "KXTEST-26JAN-A", start_ms: int = BASE_MS, per_ms: int = 1
) -> list[Trade]:
    """``per_ms`` trades share each millisecond, so ties on ts_ms are common."""
    return [
        Trade(
            trade_id=f"{ticker}-{number:07d}",
            ticker=ticker,
            yes_price=100 + number % 9800,
            count=1 + number % 5000,
            taker_side="yes" if number % 3 else "no",
            ts_ms=start_ms + number // per_ms,
        )
        for number in range(count)
    ]


def time_then_arrival(trades: list[Trade]) -> list[Trade]:
    """``trades`` (in the order offered to the store) in (ts_ms, arrival) order: the sort is
    stable, so the trades of one millisecond keep the order they were offered in."""
    return sorted(trades, key=lambda trade: trade.ts_ms)


def newest_first(trades: list[Trade]) -> list[Trade]:
    return time_then_arrival(trades)[::-1]


async def wait_until(condition: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    # Polling, not an Event: the store offers none, and what changes happens after a worker
    # thread returns, so a short real wait is the honest way to watch it.
    with trio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.002)


async def load_all(store: Store, since_ms: int = 0) -> list[Trade]:
    return [trade async for chunk in store.load_trades_since(since_ms) for trade in chunk]


@asynccontextmanager
async def running_store(db_url: str, config: StoreConfig = FAST) -> AsyncIterator[Store]:
    async with open_store(db_url, config=config) as store, trio.open_nursery() as nursery:
        await nursery.start(serve_writer, store)
        yield store
        nursery.cancel_scope.cancel()


# -- backends ------------------------------------------------------------------------------


def _with_params(url: str, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose connections see only a fresh schema, dropped afterwards."""
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        reason = f"PostgreSQL not reachable at {POSTGRES_URL}: {error}"
        if SERVICES_REQUIRED:
            pytest.fail(f"{reason} (FLOWBOARD_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    schema = f"flowboard_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            # application_name lets a test find (and kill) this store's connections.
            yield _with_params(POSTGRES_URL, options=f"-csearch_path%3D{schema}", application_name=schema)
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (schema,),
            )
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """--db for each backend; the postgres case uses (and skips with) ``postgres_url``."""
    if request.param == "sqlite":
        return str(tmp_path / "flowboard.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """An open store on each backend with its writer running."""
    async with running_store(db_url) as running:
        yield running


def _raw_query(db_url: str, sql: str) -> list[tuple[object, ...]]:
    if db_url.startswith("postgresql://"):
        with psycopg.connect(db_url) as connection:
            return connection.execute(sql).fetchall()
    with sqlite3.connect(db_url) as connection:
        return connection.execute(sql).fetchall()


@contextmanager
def _trades_table_locked(db_url: str) -> Iterator[None]:
    """Another client holds the write lock: a real database refusing writes until released."""
    if db_url.startswith("postgresql://"):
        with psycopg.connect(db_url) as connection:
            connection.execute("LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
            yield
            connection.rollback()
        return
    connection = sqlite3.connect(db_url, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


@asynccontextmanager
async def trades_table_locked(db_url: str) -> AsyncIterator[None]:
    lock = _trades_table_locked(db_url)
    await trio.to_thread.run_sync(lock.__enter__)
    try:
        yield
    finally:
        await trio.to_thread.run_sync(lock.__exit__, None, None, None)


# -- schema --------------------------------------------------------------------------------


async def test_opening_twice_migrates_once_and_keeps_the_trades(db_url: str) -> None:
    """Migrations are recorded in schema_version and not re-run: a second open finds the schema
    at the latest version and the trades still there."""
    trades = make_trades(5)
    async with running_store(db_url) as store:
        store.offer(trades)
    async with running_store(db_url) as store:
        assert await load_all(store) == trades
    versions = await trio.to_thread.run_sync(_raw_query, db_url, "SELECT version FROM schema_version")
    assert versions == [(migration.version,) for migration in MIGRATIONS]


def _write_at_version(db_url: str, version: int, trades: list[Trade]) -> None:
    """A database as Flowboard at schema ``version`` left it, holding ``trades`` inserted in order."""
    dialect = "postgres" if db_url.startswith("postgresql://") else "sqlite"
    statements = [s for m in MIGRATIONS if m.version <= version for s in m.statements(dialect)]
    statements.append("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)")
    statements += [f"INSERT INTO schema_version VALUES ({v}, 0)" for v in range(1, version + 1)]
    insert = "INSERT INTO trades VALUES (%s, %s, %s, %s, %s, %s)"
    rows = [attrs.astuple(trade) for trade in trades]
    if dialect == "postgres":
        with psycopg.connect(db_url) as connection:
            for statement in statements:
                connection.execute(statement)
            connection.cursor().executemany(insert, rows)
        return
    with sqlite3.connect(db_url) as connection:
        for statement in statements:
            connection.execute(statement)
        connection.executemany(insert.replace("%s", "?"), rows)


async def test_trades_of_a_version_2_store_are_converted_exactly(db_url: str) -> None:
    """Migration 3 numbers the trades a version-2 store holds: on SQLite in the order they were
    inserted (their rowids: earlier versions inserted in arrival order), on PostgreSQL, which
    kept no such order, by (ts_ms, trade_id) as before. New trades arrive after them.
    Migration 4 turns prices in $0.0001 into $0.000001, exactly."""
    old_units = make_trades(12, per_ms=4)
    trades = [attrs.evolve(trade, yes_price=trade.yes_price * 100) for trade in old_units]
    inserted = old_units[::-1]
    await trio.to_thread.run_sync(_write_at_version, db_url, 2, inserted)
    later = Trade("a-later", trades[0].ticker, 5000, 100, "yes", BASE_MS)
    async with running_store(db_url) as store:
        store.offer([later])
        await wait_until(lambda: store.statistics().queued == 0)
        loaded = await load_all(store)
    migrated = trades if db_url.startswith("postgresql://") else time_then_arrival(trades[::-1])
    assert loaded == time_then_arrival([*migrated, later])


async def test_markets_of_a_version_5_store_load_as_not_parlays(db_url: str) -> None:
    """Migration 6 adds the parlay collection column; markets stored before it load with "" (not
    a parlay by metadata) until their metadata is fetched again."""
    dialect = "postgres" if db_url.startswith("postgresql://") else "sqlite"
    statements = [s for m in MIGRATIONS if m.version <= 5 for s in m.statements(dialect)]
    statements.append("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)")
    statements += [f"INSERT INTO schema_version VALUES ({v}, 0)" for v in range(1, 6)]
    statements.append(
        "INSERT INTO markets (ticker, title, category, event_ticker, series_ticker)"
        " VALUES ('KXA-1', 'A', '', '', '')"
    )
    await trio.to_thread.run_sync(_raw_execute, db_url, statements)
    async with running_store(db_url) as store:
        assert await store.load_meta() == [MarketMeta("KXA-1", title="A")]


def _raw_execute(db_url: str, statements: list[str]) -> None:
    if db_url.startswith("postgresql://"):
        with psycopg.connect(db_url) as connection:
            for statement in statements:
                connection.execute(statement)
        return
    with sqlite3.connect(db_url) as connection:
        for statement in statements:
            connection.execute(statement)


# -- writing -------------------------------------------------------------------------------


async def test_rewriting_a_trade_keeps_one_row(store: Store) -> None:
    """Trades are keyed by trade_id and inserted-or-ignored: the same trade offered again, in a
    later batch or twice in one batch, is harmless."""
    first, second = make_trades(2)
    store.offer([first])
    await wait_until(lambda: store.statistics().written_total == 1)
    store.offer([first, second, second])
    await wait_until(lambda: store.statistics().queued == 0)
    assert await load_all(store) == [first, second]
    assert store.statistics().written_total == 4


async def test_many_offers_commit_in_few_batches(store: Store) -> None:
    """Offers are gathered into batches of up to batch_max_trades: 5,000 one-trade offers made
    without a pause commit in 5 batches, not 5,000."""
    trades = make_trades(5_000)
    for trade in trades:
        store.offer([trade])
    await wait_until(lambda: store.statistics().written_total == 5_000)
    assert store.statistics().batches == 5
    assert await load_all(store) == trades


async def test_values_round_trip_exactly(store: Store) -> None:
    """Sub-cent prices, fractional counts, both sides and millisecond times come back as the
    same integers, with no rounding anywhere."""
    trades = [
        Trade("a", "KXBTC-26JAN0517-B97250", 1, 1, "yes", 1),  # $0.000001, 0.01 contract
        Trade("b", "KXBTC-26JAN0517-B97250", 365_050, 12_345, "no", BASE_MS + 999),  # $0.36505, 123.45
        Trade("c", "KXFED-26MAR-T4.25", 999_999, 10**12 + 7, "yes", 2**53 + 1),
        Trade("d", "KXÜBER-1", 500_000, 250, "no", BASE_MS),
    ]
    store.offer(trades)
    await wait_until(lambda: store.statistics().queued == 0)
    assert await load_all(store) == time_then_arrival(trades)


async def test_shutdown_commits_what_is_still_queued(db_url: str) -> None:
    """Cancelling the writer still commits the queue (within shutdown_flush_s), so a graceful
    stop loses no trade."""
    trades = make_trades(2_500)
    async with open_store(db_url, config=FAST) as store:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_writer, store)
            store.offer(trades)
            nursery.cancel_scope.cancel()
        assert store.statistics().queued == 0
    async with running_store(db_url) as reopened:
        assert await load_all(reopened) == trades


# -- reading -------------------------------------------------------------------------------


async def test_load_trades_since_yields_trade_time_order_in_chunks(db_url: str) -> None:
    """A rebuild gets every trade at or after since_ms in (ts_ms, arrival) order: by time, and
    the trades of one millisecond in the order they were offered (not by id), in chunks no
    bigger than load_chunk_trades."""
    trades = make_trades(1_050, per_ms=4) + make_trades(300, ticker="KXOTHER-B", per_ms=2)
    random.Random(7).shuffle(trades)
    since_ms = BASE_MS + 40
    async with running_store(db_url, attrs.evolve(FAST, load_chunk_trades=100)) as store:
        store.offer(trades)
        await wait_until(lambda: store.statistics().queued == 0)
        chunks = [chunk async for chunk in store.load_trades_since(since_ms)]
    expected = time_then_arrival([t for t in trades if t.ts_ms >= since_ms])
    assert [trade for chunk in chunks for trade in chunk] == expected
    assert all(0 < len(chunk) <= 100 for chunk in chunks)


async def test_market_trades_pages_without_gaps_or_overlaps(store: Store) -> None:
    """Paging newest first by (ts_ms, arrival) returns each of a market's trades exactly once,
    the trades of one millisecond latest arrival first, even when many share a millisecond
    across page boundaries; other markets never appear."""
    wanted = make_trades(103, per_ms=5)
    random.Random(3).shuffle(wanted)
    store.offer(wanted + make_trades(50, ticker="KXOTHER-B", per_ms=5))
    await wait_until(lambda: store.statistics().queued == 0)

    pages: list[list[Trade]] = []
    before: Trade | None = None
    while True:
        page = await store.market_trades(
            wanted[0].ticker,
            None if before is None else before.ts_ms,
            7,
            before_trade_id=None if before is None else before.trade_id,
        )
        if not page:
            break
        pages.append(page)
        before = page[-1]

    assert [trade for page in pages for trade in page] == newest_first(wanted)
    assert all(len(page) == 7 for page in pages[:-1])


async def test_market_trades_before_a_millisecond_starts_below_it(store: Store) -> None:
    """With before_ms alone the page holds only trades strictly earlier than that millisecond."""
    trades = make_trades(20, per_ms=4)
    store.offer(trades)
    await wait_until(lambda: store.statistics().queued == 0)
    page = await store.market_trades(trades[0].ticker, BASE_MS + 3, 100)
    assert page == newest_first([t for t in trades if t.ts_ms < BASE_MS + 3])


async def test_last_trade_time_and_known_ids(store: Store) -> None:
    """last_trade_ms is None on an empty store, then the newest trade time; known_trade_ids_since
    holds the ids at or after a time (for the ingest's de-duplication)."""
    assert await store.last_trade_ms() is None
    trades = make_trades(10, per_ms=2)
    store.offer(trades)
    await wait_until(lambda: store.statistics().queued == 0)
    assert await store.last_trade_ms() == BASE_MS + 4
    assert await store.known_trade_ids_since(BASE_MS + 3) == {t.trade_id for t in trades[6:]}


async def test_market_metadata_is_saved_replaced_and_loaded(store: Store) -> None:
    """save_meta inserts or replaces by ticker; load_meta returns every market, unknown close
    times, open interest and liquidity staying None; a parlay keeps its collection ticker."""
    parlay = MarketMeta(
        "KXMVESPORTS-25NOV30-X1", "yes Chiefs,yes Over 45.5", mve_collection_ticker="KXMVESPORTS"
    )
    await store.save_meta(
        [
            MarketMeta("KXB-1", "Will B?", "Economics", BASE_MS, "KXB-EV", "KXB", 1_234_567, 10**15 + 1),
            MarketMeta("KXA-1", title="Will A?"),
            parlay,
        ]
    )
    replaced = MarketMeta("KXB-1", "Will B, really?", "Economics", None, "KXB-EV", "KXB", 42, None)
    await store.save_meta([replaced])
    assert await store.load_meta() == [MarketMeta("KXA-1", title="Will A?"), replaced, parlay]


# -- retention -----------------------------------------------------------------------------


async def test_purge_deletes_only_trades_older_than_the_cutoff(db_url: str) -> None:
    """purge_before removes, in many small statements, exactly the trades before the cutoff;
    a trade at the cutoff stays."""
    old = make_trades(95, ticker="KXOLD-A")
    kept = make_trades(20, ticker="KXNEW-A", start_ms=BASE_MS + 1_000)
    async with running_store(db_url, attrs.evolve(FAST, retention_batch_rows=10)) as store:
        store.offer(old + kept)
        await wait_until(lambda: store.statistics().queued == 0)
        assert await store.purge_before(BASE_MS + 1_000) == 95
        assert await load_all(store) == kept


async def test_retention_expires_trades_older_than_retention_days(db_url: str) -> None:
    """The writer's retention task periodically deletes trades older than retention_days by the
    wall clock and keeps newer ones."""
    now_ms = wall_clock_ms()
    expired = make_trades(30, ticker="KXOLD-A", start_ms=now_ms - 8 * DAY_MS)
    recent = make_trades(30, ticker="KXNEW-A", start_ms=now_ms - 6 * DAY_MS)
    config = attrs.evolve(FAST, retention_days=7, retention_interval_s=0.01)
    async with running_store(db_url, config) as store:
        store.offer(expired + recent)
        await wait_until(lambda: store.statistics().queued == 0)
        with trio.fail_after(10):
            while await load_all(store) != recent:  # noqa: ASYNC110 (see wait_until)
                await trio.sleep(0.005)


# -- when the database fails ---------------------------------------------------------------


async def test_trades_wait_while_the_database_refuses_writes_and_are_written_after(db_url: str) -> None:
    """While another client holds the write lock, offered trades stay queued, the store reports
    itself unhealthy with the error, and retries; once the lock goes, every trade is written and
    the store is healthy again."""
    trades = make_trades(1_500)
    async with running_store(db_url) as store:
        async with trades_table_locked(db_url):
            store.offer(trades)
            await wait_until(lambda: store.statistics().failures >= 2)
            during = store.statistics()
            assert (during.healthy, during.queued, during.written_total) == (False, 1_500, 0)
            assert during.last_error is not None and "lock" in during.last_error
        await wait_until(lambda: store.statistics().queued == 0)
        after = store.statistics()
        assert after.healthy and after.written_total == 1_500 and after.dropped == 0
        assert after.last_commit_ms is not None
        assert await load_all(store) == trades


async def test_a_full_queue_drops_newest_trades_and_counts_and_logs_them(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the database refusing writes, trades beyond queue_max_trades are dropped, counted and
    logged once; the ones held are written when the database is back."""
    trades = make_trades(150)
    config = attrs.evolve(FAST, queue_max_trades=100)
    caplog.set_level(logging.WARNING, logger="flowboard.store")
    async with running_store(db_url, config) as store:
        async with trades_table_locked(db_url):
            store.offer(trades[:80])
            store.offer(trades[80:])
            full = store.statistics()
            assert (full.queued, full.dropped, full.healthy) == (100, 50, False)
            await wait_until(lambda: store.statistics().failures >= 1)
        await wait_until(lambda: store.statistics().queued == 0)
        after = store.statistics()
        assert after.written_total + after.dropped + after.rejected + after.queued == 150
        assert await load_all(store) == trades[:100]
    queue_full_logs = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(queue_full_logs) == 1
    assert any("after dropping 50 trades" in r.getMessage() for r in caplog.records)


async def test_a_trade_the_database_refuses_is_logged_and_does_not_hold_back_the_rest(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A trade the database cannot hold (a count beyond 64 bits) is not retried forever: it is
    logged and counted as rejected, the rest of its batch is written, and the store stays healthy."""
    good = make_trades(3)
    too_big = attrs.evolve(good[0], trade_id="too-big", count=2**63)
    store.offer([good[0], too_big, good[1], good[2]])
    await wait_until(lambda: store.statistics().queued == 0)
    after = store.statistics()
    assert (after.written_total, after.rejected, after.failures, after.healthy) == (3, 1, 0, True)
    assert await load_all(store) == good
    assert any("too-big" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


@pytest.mark.postgres
async def test_postgres_connections_killed_by_the_server_are_replaced(postgres_url: str) -> None:
    """When the server terminates the store's connections (a restart, an admin), the pool
    reconnects and later batches are written."""
    schema = postgres_url.rsplit("application_name=", 1)[1]
    first, second = make_trades(200)[:100], make_trades(200)[100:]
    async with running_store(postgres_url) as store:
        store.offer(first)
        await wait_until(lambda: store.statistics().written_total == 100)
        killed = await trio.to_thread.run_sync(
            _raw_query,
            POSTGRES_URL,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{schema}'",
        )
        assert killed
        store.offer(second)
        await wait_until(lambda: store.statistics().written_total == 200)
        assert await load_all(store) == first + second


# -- opening -------------------------------------------------------------------------------


async def test_unreachable_postgres_is_a_store_error_naming_the_server() -> None:
    """A well-formed URL with nothing listening fails start-up with StoreError saying where it
    tried and why, without the password."""
    config = StoreConfig(connect_timeout_s=2)
    with pytest.raises(
        StoreError, match=r"PostgreSQL not reachable at 127\.0\.0\.1:1/nothing: .*refused"
    ) as raised:
        async with open_store("postgresql://nobody:secret@127.0.0.1:1/nothing", config=config):
            pass
    assert "secret" not in str(raised.value)


async def test_a_file_that_is_not_sqlite_is_a_config_error(tmp_path: Path) -> None:
    """--db pointing at some other file stops start-up with a ConfigError naming the path."""
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_bytes(b"these are not the trades you are looking for" * 100)
    with pytest.raises(ConfigError, match="cannot open it as a SQLite database"):
        async with open_store(str(not_a_database)):
            pass

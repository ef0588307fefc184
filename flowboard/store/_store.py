"""The trio face of the store: a batched writer task and async reads, over a sync database
that runs in worker threads. The SQL lives in ``_sqlite`` and ``_postgres``."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Iterable, Sequence
from typing import NoReturn, Protocol, TypeVar, TypeVarTuple

import trio

from flowboard.aggregate.alerts import Alert
from flowboard.errors import StoreError, TradesRejected
from flowboard.model import DAY_MS, MarketMeta, Trade, wall_clock_ms

from ._config import StoreConfig
from ._history import CandlePage
from ._pending import Cursor, Dropped, PageCursor, PendingTrades, StoreStatistics, page_cursor, retry_delay_s
from ._summary import StoredSummary

log = logging.getLogger("flowboard.store")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Database(Protocol):
    """One backend's SQL, synchronous; every method raises StoreError when the database fails,
    and insert_trades raises TradesRejected when it is the trades that are wrong."""

    def migrate(self) -> int: ...
    def insert_trades(self, trades: Sequence[Trade]) -> None: ...
    def insert_alerts(self, alerts: Sequence[Alert]) -> None: ...
    def latest_alerts(self, limit: int) -> list[Alert]: ...
    def delete_trades_before(self, cutoff_ms: int, max_rows: int) -> int: ...
    def market_trades_before(self, ticker: str, before: PageCursor, limit: int) -> list[Trade]: ...
    def trades_after(self, after: Cursor, limit: int) -> tuple[list[Trade], Cursor]: ...
    def market_candles(self, ticker: str, interval_ms: int, since_ms: int, limit: int) -> CandlePage: ...
    def trades_between(
        self, ticker: str | None, after: Cursor, until_ms: int, min_usd: int, limit: int
    ) -> tuple[list[Trade], Cursor]: ...
    def summary_since(
        self, since_ms: int, ids_since_ms: int, recent_since_ms: int, tape_size: int, per_market: int
    ) -> StoredSummary: ...
    def last_trade_ms(self) -> int | None: ...
    def trade_ids_since(self, since_ms: int) -> set[str]: ...
    def stored_trade_ids(self, trade_ids: Sequence[str]) -> set[str]: ...
    def save_meta(self, metas: Sequence[MarketMeta]) -> None: ...
    def load_meta(self, tickers: Sequence[str] | None) -> list[MarketMeta]: ...
    def load_source_state(self, name: str) -> str | None: ...
    def save_source_state(self, name: str, value: str) -> None: ...
    def close(self) -> None: ...


class Store(Protocol):
    """Where every trade is kept, and what a restart rebuilds from."""

    def offer(self, trades: Iterable[Trade]) -> None: ...
    def offer_alerts(self, alerts: Iterable[Alert]) -> None: ...
    async def load_alerts(self, limit: int) -> list[Alert]: ...
    def was_dropped(self, trade: Trade) -> Dropped: ...
    def statistics(self) -> StoreStatistics: ...
    async def serve_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn: ...
    async def purge_before(self, cutoff_ms: int) -> int: ...
    async def market_trades(
        self, ticker: str, before_ms: int | None, limit: int, *, before_trade_id: str | None = None
    ) -> list[Trade]: ...
    def load_trades_since(self, since_ms: int) -> AsyncIterator[list[Trade]]: ...
    async def market_candles(
        self, ticker: str, interval_ms: int, since_ms: int, limit: int
    ) -> CandlePage: ...
    def export_trades(
        self, since_ms: int, until_ms: int, *, ticker: str | None = None, min_usd: int = 0
    ) -> AsyncGenerator[list[Trade]]: ...
    async def load_summary_since(
        self,
        since_ms: int,
        *,
        ids_since_ms: int | None = None,
        recent_since_ms: int,
        tape_size: int,
        per_market: int,
    ) -> StoredSummary: ...
    async def last_trade_ms(self) -> int | None: ...
    async def known_trade_ids_since(self, since_ms: int) -> set[str]: ...
    async def stored_trade_ids(self, trade_ids: Collection[str]) -> set[str]: ...
    async def save_meta(self, metas: Sequence[MarketMeta]) -> None: ...
    async def load_meta(self, tickers: Collection[str] | None = None) -> list[MarketMeta]: ...
    async def load_source_state(self, name: str) -> str | None: ...
    async def save_source_state(self, name: str, value: str) -> None: ...


class BatchedStore:
    """Shared by both backends: the bounded queue, the writer task, retention and reads."""

    def __init__(
        self,
        database: Database,
        config: StoreConfig,
        *,
        write_limiter: trio.CapacityLimiter,
        read_limiter: trio.CapacityLimiter,
    ) -> None:
        self._database = database
        self._config = config
        # One write at a time: SQLite allows one writer, and batches must commit in offer order.
        self._write_limiter = write_limiter
        self._read_limiter = read_limiter
        # Alerts wait behind the trades that raised them: each commit of trades takes them along.
        self._pending_alerts: list[Alert] = []
        self._dropped_alerts = 0
        # The aggregation loop's late-trade lookups, one at a time and apart from the other
        # reads: a caller that gives up abandons the thread, which holds this until it ends,
        # so a stuck database costs one thread, never a pile of them or the pages' reads.
        self._lookup_limiter = trio.CapacityLimiter(1)
        self._pending = PendingTrades(config.queue_max_trades, config.dropped_ids_kept)
        # Set by offer() once the queue holds _wake_at_queued trades; replaced each time the writer waits.
        self._writer_wakeup = trio.Event()
        self._wake_at_queued = 1
        # True from the first dropped trade until the queue is half empty, so a full queue logs once.
        self._dropping = False
        self._dropped_at_episode_start = 0
        self._written_total = 0
        self._batches = 0
        self._failures = 0
        self._rejected = 0
        self._last_error: str | None = None
        self._last_attempt_failed = False
        self._last_commit_ms: int | None = None

    async def migrate(self) -> int:
        """Bring the schema up to date; returns the schema version."""
        return await self._run_write(self._database.migrate)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            # An abandoned lookup may still be reading: let it end (its statement is bounded by
            # the lock timeout) before its connection closes.
            with trio.move_on_after(self._config.lock_timeout_s):
                await self._lookup_limiter.acquire()
            await self._run_write(self._database.close)

    # -- writing ---------------------------------------------------------------------------

    def offer(self, trades: Iterable[Trade]) -> None:
        """Queue trades for the writer without ever waiting; what does not fit is dropped and counted."""
        dropped = self._pending.offer(trades)
        if dropped and not self._dropping:
            self._dropping = True
            self._dropped_at_episode_start = self._pending.dropped_total - dropped
            log.warning(
                "store queue full (%d trades): dropping trades until the database catches up",
                self._pending.capacity,
            )
        if len(self._pending) >= self._wake_at_queued:
            self._writer_wakeup.set()

    def offer_alerts(self, alerts: Iterable[Alert]) -> None:
        """Queue alerts for the writer, which commits them after the trades offered before them.
        Bounded like the trades: past ``queue_max_trades`` they are dropped and counted."""
        for alert in alerts:
            if len(self._pending_alerts) >= self._pending.capacity:
                self._dropped_alerts += 1
                if self._dropped_alerts == 1:
                    log.warning("store: alert queue full; dropping alerts until the database catches up")
                continue
            self._pending_alerts.append(alert)
    def was_dropped(self, trade: Trade) -> Dropped:
        """Whether ``offer`` dropped this trade (by its id) for lack of room, and has not
        queued it since: "maybe" when too many were dropped to keep all their ids."""
        return self._pending.dropped_ids.of(trade)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            queued=len(self._pending),
            written_total=self._written_total,
            batches=self._batches,
            failures=self._failures,
            dropped=self._pending.dropped_total,
            rejected=self._rejected,
            last_error=self._last_error,
            healthy=not self._last_attempt_failed and len(self._pending) < self._pending.capacity / 2,
            last_commit_ms=self._last_commit_ms,
        )

    async def serve_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Commit offered trades in batches and expire old ones, forever.

        On cancellation it keeps committing what is queued for up to ``shutdown_flush_s``.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire_old_trades_forever)
                task_status.started()
                await self._write_forever()
        finally:
            await self._flush_before_exit()

    async def _write_forever(self) -> NoReturn:
        while True:
            await self._wait_for_batch()
            await self._commit_oldest_batch()

    async def _wait_for_batch(self) -> None:
        await self._wait_until_queued(1)
        with trio.move_on_after(self._config.batch_interval_s):
            await self._wait_until_queued(self._config.batch_max_trades)

    async def _wait_until_queued(self, count: int) -> None:
        while len(self._pending) < count:
            self._wake_at_queued = count
            self._writer_wakeup = trio.Event()
            await self._writer_wakeup.wait()

    async def _commit_oldest_batch(self) -> None:
        """Write the oldest batch, retrying with backoff until the database takes it; trades the
        database refuses outright are logged and counted as rejected."""
        # The batch stays at the head of the queue until committed, so it is counted as queued
        # (and holds its place) while the database is down.
        batch = self._pending.oldest(self._config.batch_max_trades)
        rejected = 0
        try:
            await self._insert_until_committed(batch)
        except TradesRejected:
            # One bad trade must not hold back the rest forever: find it by writing one at a time.
            for trade in batch:
                try:
                    await self._insert_until_committed([trade])
                except TradesRejected as error:
                    rejected += 1
                    log.error("store: the database refused %r, so it is not stored: %s", trade, error)
        self._pending.discard_oldest(len(batch))
        await self._commit_alerts()
        self._rejected += rejected
        self._written_total += len(batch) - rejected
        self._batches += 1
        self._last_commit_ms = wall_clock_ms()
        if self._last_attempt_failed:
            self._last_attempt_failed = False
            log.warning("store: database is back; %d trades still queued", len(self._pending))
        # Half empty, not merely one batch of room, so a database that only just keeps up does
        # not log a full/room pair per batch.
        if self._dropping and len(self._pending) < self._pending.capacity / 2:
            self._dropping = False
            log.warning(
                "store: queue has room again after dropping %d trades",
                self._pending.dropped_total - self._dropped_at_episode_start,
            )

    async def _commit_alerts(self) -> None:
        """Write the queued alerts: all of them were offered after the trades that raised them,
        which are committed by now or wait in the queue behind this batch."""
        alerts, self._pending_alerts = self._pending_alerts, []
        if not alerts:
            return
        try:
            await self._run_write(self._database.insert_alerts, alerts)
        except StoreError as error:
            # Put them back in front: the next commit of trades tries again.
            self._pending_alerts[:0] = alerts
            log.warning(
                "store: writing %d alerts failed (%s); trying again with the next trades", len(alerts), error
            )

    async def _insert_until_committed(self, trades: list[Trade]) -> None:
        failures_in_a_row = 0
        while True:
            try:
                await self._run_write(self._database.insert_trades, trades)
            except TradesRejected:
                raise
            except StoreError as error:
                failures_in_a_row += 1
                self._failures += 1
                self._last_attempt_failed = True
                self._last_error = str(error)
                delay_s = retry_delay_s(
                    failures_in_a_row, self._config.retry_initial_s, self._config.retry_max_s
                )
                log.warning(
                    "store: writing %d trades failed (%s); retrying in %.1f s with %d queued",
                    len(trades),
                    error,
                    delay_s,
                    len(self._pending),
                )
                await trio.sleep(delay_s)
            else:
                return

    async def _flush_before_exit(self) -> None:
        with trio.move_on_after(self._config.shutdown_flush_s, shield=True):
            while self._pending:
                await self._commit_oldest_batch()
            await self._commit_alerts()
        if self._pending:
            log.error("store: shut down with %d trades not written", len(self._pending))

    # -- retention -------------------------------------------------------------------------

    async def _expire_old_trades_forever(self) -> NoReturn:
        while True:
            cutoff_ms = wall_clock_ms() - round(self._config.retention_days * DAY_MS)
            try:
                deleted = await self.purge_before(cutoff_ms)
            except StoreError as error:
                log.warning(
                    "store: retention failed (%s); trying again in %.0f s",
                    error,
                    self._config.retention_interval_s,
                )
            else:
                if deleted:
                    log.info(
                        "store: retention deleted %d trades older than %g days",
                        deleted,
                        self._config.retention_days,
                    )
            await trio.sleep(self._config.retention_interval_s)

    async def purge_before(self, cutoff_ms: int) -> int:
        """Delete trades older than ``cutoff_ms`` in small statements, letting batches commit in
        between; returns how many went."""
        deleted_total = 0
        while True:
            deleted = await self._run_write(
                self._database.delete_trades_before, cutoff_ms, self._config.retention_batch_rows
            )
            deleted_total += deleted
            if deleted < self._config.retention_batch_rows:
                return deleted_total

    # -- reading ---------------------------------------------------------------------------

    async def market_trades(
        self, ticker: str, before_ms: int | None, limit: int, *, before_trade_id: str | None = None
    ) -> list[Trade]:
        """One market's trades, newest first, strictly before a position.

        Trades of one millisecond come latest arrival first. For the next page pass the last
        trade's ``ts_ms`` and ``trade_id``; with ``before_ms``
        alone the page starts below that millisecond, and with neither at the newest trade.
        """
        cursor = page_cursor(before_ms, before_trade_id)
        return await self._run_read(self._database.market_trades_before, ticker, cursor, limit)

    async def load_trades_since(self, since_ms: int) -> AsyncIterator[list[Trade]]:
        """Every trade at or after ``since_ms`` in (ts_ms, arrival) order, in chunks of
        ``load_chunk_trades``; each chunk is its own query, so nothing is held between chunks."""
        chunk_size = self._config.load_chunk_trades
        cursor: Cursor = (since_ms, 0)
        while True:
            chunk, cursor = await self._run_read(self._database.trades_after, cursor, chunk_size)
            if chunk:
                yield chunk
            if len(chunk) < chunk_size:
                return

    async def market_candles(self, ticker: str, interval_ms: int, since_ms: int, limit: int) -> CandlePage:
        """At most ``limit`` candles of ``interval_ms`` (a key of ``CANDLE_INTERVALS_MS``'s
        values) of one market, from the period ``since_ms`` falls in, oldest first."""
        return await self._run_read(self._database.market_candles, ticker, interval_ms, since_ms, limit)

    async def export_trades(
        self, since_ms: int, until_ms: int, *, ticker: str | None = None, min_usd: int = 0
    ) -> AsyncGenerator[list[Trade]]:
        """The trades in [since_ms, until_ms) (of one market, or all) of at least ``min_usd``,
        in (ts_ms, arrival) order, in chunks of at most ``export_chunk_trades``: each chunk is
        its own query, so an export of any size holds one chunk at a time."""
        chunk_size = self._config.export_chunk_trades
        cursor: Cursor = (since_ms, 0)
        while True:
            chunk, next_cursor = await self._run_read(
                self._database.trades_between, ticker, cursor, until_ms, min_usd, chunk_size
            )
            if chunk:
                yield chunk
            if next_cursor == cursor:
                return
            cursor = next_cursor

    async def load_summary_since(
        self,
        since_ms: int,
        *,
        ids_since_ms: int | None = None,
        recent_since_ms: int,
        tape_size: int,
        per_market: int,
    ) -> StoredSummary:
        """The trades at or after ``since_ms`` as a restart needs them, from one snapshot: each
        minute's totals and markets, and its trade ids from ``ids_since_ms`` on (default: all),
        and whole trades for every one at or after ``recent_since_ms``, the latest
        ``tape_size`` and each market's latest ``per_market``."""
        return await self._run_read(
            self._database.summary_since,
            since_ms,
            since_ms if ids_since_ms is None else ids_since_ms,
            recent_since_ms,
            tape_size,
            per_market,
        )

    async def last_trade_ms(self) -> int | None:
        return await self._run_read(self._database.last_trade_ms)

    async def load_alerts(self, limit: int) -> list[Alert]:
        """The latest ``limit`` stored alerts, newest first."""
        return await self._run_read(self._database.latest_alerts, limit)

    async def known_trade_ids_since(self, since_ms: int) -> set[str]:
        return await self._run_read(self._database.trade_ids_since, since_ms)

    async def stored_trade_ids(self, trade_ids: Collection[str]) -> set[str]:
        """Which of ``trade_ids`` the store has: committed, or offered and still queued.

        The queue is read first: a trade leaves it only once committed, so one that left it
        during the database read below was committed before that read began.
        Cancellable at any await: the database read is then abandoned (it finishes in its
        thread), and until it has, further lookups fail at once with StoreError rather than
        queue behind it.
        """
        wanted = set(trade_ids)
        queued = wanted & self._pending.trade_ids()
        unqueued = sorted(wanted - queued)
        if not unqueued:
            return queued
        if not self._lookup_limiter.available_tokens:
            raise StoreError("an earlier lookup of trade ids has not finished")
        stored = await trio.to_thread.run_sync(
            self._database.stored_trade_ids, unqueued, limiter=self._lookup_limiter, abandon_on_cancel=True
        )
        return queued | stored

    async def save_meta(self, metas: Sequence[MarketMeta]) -> None:
        """Insert or replace market metadata by ticker."""
        await self._run_write(self._database.save_meta, metas)

    async def load_meta(self, tickers: Collection[str] | None = None) -> list[MarketMeta]:
        """The stored metadata of ``tickers`` (of every market when None), by ticker."""
        return await self._run_read(self._database.load_meta, None if tickers is None else sorted(tickers))

    async def load_source_state(self, name: str) -> str | None:
        """What source ``name`` saved to carry on after a restart, or None."""
        return await self._run_read(self._database.load_source_state, name)

    async def save_source_state(self, name: str, value: str) -> None:
        await self._run_write(self._database.save_source_state, name, value)

    # -- threads ---------------------------------------------------------------------------

    async def _run_write(self, call: Callable[[*Ts], T], *args: *Ts) -> T:
        return await trio.to_thread.run_sync(call, *args, limiter=self._write_limiter)

    async def _run_read(self, call: Callable[[*Ts], T], *args: *Ts) -> T:
        return await trio.to_thread.run_sync(call, *args, limiter=self._read_limiter)

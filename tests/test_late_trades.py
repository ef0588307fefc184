"""Exactly once past the remembered ids: a trade older than the aggregator's de-duplication
horizon is looked up in the store (committed or still queued) before it is aggregated, so
the store, the windows and the analytics count it once, also after a restart."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import attrs
import pytest
import trio

# Fixtures of the store suite: each test taking db_url runs on SQLite and on PostgreSQL.
from test_store import (  # noqa: F401
    FAST,
    db_url,
    load_all,
    postgres_url,
    running_store,
    trades_table_locked,
    wait_until,
)

from flowboard.aggregate.aggregator import Aggregator, retention_start_ms
from flowboard.aggregate.events import Event, TradeAdded
from flowboard.errors import StoreError
from flowboard.model import MINUTE_MS, Trade
from flowboard.server.metrics import Metrics
from flowboard.server.pipeline import Ingestor, StoreLookup, look_up_old_trades
from flowboard.store import Store

#: 2024-03-10 12:00:00 UTC
NOW = 1_710_072_000_000
HORIZON_MS = 5 * MINUTE_MS


def trade(trade_id: str, ts_ms: int, ticker: str = "KXA-1") -> Trade:
    return Trade(trade_id, ticker, 5000, 100, "yes", ts_ms)


def counted(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, f"no metric {name}"
    return value


async def aggregate(
    ingestor: Ingestor,
    store: Store | None,
    trades: Sequence[Trade],
    wall_ms: Callable[[], int],
    *,
    timeout_s: float = 10.0,
) -> list[Event]:
    """One batch through the pipeline's steps: ask the store, then accept at the time returned."""
    now, lookup = await look_up_old_trades(ingestor.agg, store, trades, wall_ms, timeout_s=timeout_s)
    events: list[Event] = []
    for t in trades:
        events.extend(ingestor.accept(t, now, lookup))
    return events


def added(events: list[Event]) -> list[str]:
    return [event.trade.trade_id for event in events if isinstance(event, TradeAdded)]


async def test_late_duplicates_are_refused_after_a_restart(db_url: str) -> None:  # noqa: F811
    """A restarted aggregator remembers only the horizon's ids: a duplicate of an older stored
    trade is refused by the store's word, a new old trade is counted once even when it comes
    twice in a batch or again while still queued, and a recent duplicate is refused on ids."""
    old = trade("old", NOW - 30 * MINUTE_MS)
    recent = trade("recent", NOW - MINUTE_MS)
    async with running_store(db_url) as store:
        store.offer([old, recent])
        await wait_until(lambda: store.statistics().written_total == 2)
        # The restart: what pipeline._rebuild does.
        agg = Aggregator(window_ms=60 * MINUTE_MS, dedup_horizon_ms=HORIZON_MS)
        summary = await store.load_summary_since(
            retention_start_ms(NOW, agg.window_ms),
            recent_since_ms=NOW - agg.window_ms + 1,
            tape_size=agg.tape_size,
            per_market=agg.history_len,
        )
        agg.restore(NOW, summary.minutes, summary.recent)
        assert agg.statistics().remembered_trade_ids == 1  # "old" is the store's to know
        metrics = Metrics()
        ingestor = Ingestor(agg, metrics, store=store)

        new_old = trade("new-old", NOW - 20 * MINUTE_MS)
        events = await aggregate(ingestor, store, [old, recent, new_old, new_old], lambda: NOW)
        assert added(events) == ["new-old"]
        # Again while the store may still hold it in its queue, and once it is written.
        assert added(await aggregate(ingestor, store, [new_old, old], lambda: NOW)) == []
        await wait_until(lambda: store.statistics().written_total == 3)
        assert added(await aggregate(ingestor, store, [new_old], lambda: NOW + 1)) == []

    assert agg.trades_total == 3
    assert agg.window(0).trades == 3
    assert agg.analytics("hour").total_trades == 3
    assert counted(metrics, "flowboard_trades_ingested_total") == 1
    assert counted(metrics, "flowboard_trades_duplicate_total") == 6


async def test_a_trade_that_ages_past_the_horizon_while_the_store_answers_is_asked_about() -> None:
    """The clock moves during the lookup; a trade it carries past the horizon is asked about
    too, so nothing is refused for lack of an answer."""
    agg = Aggregator(window_ms=60 * MINUTE_MS, dedup_horizon_ms=HORIZON_MS)
    agg.advance(NOW)
    ageing = trade("ageing", NOW - HORIZON_MS + 1)  # inside the horizon at NOW, not 2 min later
    older = trade("older", NOW - 20 * MINUTE_MS)
    asked: list[set[str]] = []

    class SlowStore:
        async def stored_trade_ids(self, trade_ids: set[str]) -> set[str]:
            asked.append(set(trade_ids))
            await trio.lowlevel.checkpoint()
            return set()

    times = iter([NOW, NOW + 2 * MINUTE_MS, NOW + 2 * MINUTE_MS])
    store: Store = SlowStore()  # type: ignore[assignment]  # only what the lookup uses
    now, lookup = await look_up_old_trades(agg, store, [ageing, older], lambda: next(times), timeout_s=10)
    assert now == NOW + 2 * MINUTE_MS
    assert asked == [{"older"}, {"ageing"}]
    assert lookup == StoreLookup(checked={"older", "ageing"}, stored=set(), unverified=set())


async def test_a_store_that_cannot_answer_gets_the_trade_and_the_views_do_not() -> None:
    """When the lookup fails the trade is offered to the store, whose unique key keeps it once,
    and left out of the views, where it could count twice; counted as unverified."""
    agg = Aggregator(window_ms=60 * MINUTE_MS, dedup_horizon_ms=HORIZON_MS)
    agg.advance(NOW)
    offered: list[Trade] = []

    class DownStore:
        def offer(self, trades: Sequence[Trade]) -> None:
            offered.extend(trades)

        async def stored_trade_ids(self, trade_ids: set[str]) -> set[str]:
            await trio.lowlevel.checkpoint()
            raise StoreError("database is down")

    store: Store = DownStore()  # type: ignore[assignment]  # only what the pipeline uses here
    metrics = Metrics()
    ingestor = Ingestor(agg, metrics, store=store)
    late = trade("late", NOW - 20 * MINUTE_MS)
    assert added(await aggregate(ingestor, store, [late], lambda: NOW)) == []
    assert offered == [late]
    assert agg.trades_total == 0
    assert counted(metrics, "flowboard_trades_unverified_total") == 1


async def test_a_lookup_the_database_does_not_answer_in_time_is_abandoned(
    db_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database read that hangs holds the aggregation loop only for the lookup's timeout: the
    late trade is stored but not shown (unverified), the hung read is left to its thread, and a
    lookup while it still runs fails at once instead of queueing behind it. Once it ends, the
    lookup answers again, and the trade, stored meanwhile, is refused: counted once, never twice."""
    release, finished = threading.Event(), threading.Event()
    async with running_store(db_url) as store:
        database = store._database  # type: ignore[attr-defined]  # the backend under the queue
        answer = database.stored_trade_ids

        def hung(trade_ids: Sequence[str]) -> set[str]:
            release.wait(30)
            try:
                return answer(trade_ids)
            finally:
                finished.set()

        monkeypatch.setattr(database, "stored_trade_ids", hung)
        agg = Aggregator(window_ms=60 * MINUTE_MS, dedup_horizon_ms=HORIZON_MS)
        agg.advance(NOW)
        metrics = Metrics()
        ingestor = Ingestor(agg, metrics, store=store)
        late, other = trade("late", NOW - 20 * MINUTE_MS), trade("other", NOW - 19 * MINUTE_MS)
        with trio.fail_after(5):
            assert added(await aggregate(ingestor, store, [late], lambda: NOW, timeout_s=0.05)) == []
        assert counted(metrics, "flowboard_trades_unverified_total") == 1
        with trio.fail_after(1):  # not the 30 s it would wait behind the hung read
            assert added(await aggregate(ingestor, store, [other], lambda: NOW, timeout_s=30)) == []
        assert counted(metrics, "flowboard_trades_unverified_total") == 2
        await wait_until(lambda: store.statistics().written_total == 2)

        release.set()
        await wait_until(finished.is_set)
        await wait_until(lambda: store._lookup_limiter.available_tokens == 1)  # type: ignore[attr-defined]
        assert added(await aggregate(ingestor, store, [late, other], lambda: NOW)) == []
    assert agg.trades_total == 0
    assert counted(metrics, "flowboard_trades_unverified_total") == 2
    assert counted(metrics, "flowboard_trades_duplicate_total") == 2


async def test_a_trade_the_full_queue_dropped_is_stored_when_sent_again_and_counted_once(
    db_url: str,  # noqa: F811
) -> None:
    """The views count a trade when it comes; if the store's full queue then drops it, the
    feed's next copy is the store's only chance: it is stored, and the views refuse it, within
    the de-duplication horizon (by id) and past it (the store remembers what it dropped),
    where the store's lookup alone would call it new and count it twice."""
    config = attrs.evolve(FAST, queue_max_trades=1)
    agg = Aggregator(window_ms=60 * MINUTE_MS, dedup_horizon_ms=HORIZON_MS)
    agg.advance(NOW)
    metrics = Metrics()
    first, lost, lost_recent = (trade(name, NOW - MINUTE_MS) for name in ("first", "lost", "lost-recent"))
    async with running_store(db_url, config) as store:
        ingestor = Ingestor(agg, metrics, store=store)
        async with trades_table_locked(db_url):
            events = await aggregate(ingestor, store, [first, lost, lost_recent], lambda: NOW)
            assert added(events) == ["first", "lost", "lost-recent"]
            assert store.statistics().dropped == 2
        await wait_until(lambda: store.statistics().queued == 0)
        assert added(await aggregate(ingestor, store, [lost_recent], lambda: NOW + 1)) == []
        await wait_until(lambda: store.statistics().queued == 0)
        assert added(await aggregate(ingestor, store, [lost], lambda: NOW + 10 * MINUTE_MS)) == []
        await wait_until(lambda: store.statistics().written_total == 3)
        assert sorted(t.trade_id for t in await load_all(store)) == ["first", "lost", "lost-recent"]
        # Stored now: refused on the store's word.
        assert added(await aggregate(ingestor, store, [lost], lambda: NOW + 11 * MINUTE_MS)) == []
    assert agg.trades_total == 3
    assert agg.analytics("hour").total_trades == 3
    assert counted(metrics, "flowboard_trades_ingested_total") == 3
    assert counted(metrics, "flowboard_trades_duplicate_total") == 3
    assert counted(metrics, "flowboard_trades_unverified_total") == 0

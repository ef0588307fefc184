"""The headline ingest test: thousands of trades through ~50 mixed faults, none lost, none twice."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from fake_kalshi import FakeKalshi, eventually, session_private_key, write_test_key

from flowboard.ingest.feed import FeedItem, Received
from flowboard.ingest.kalshi import KalshiConfig, KalshiIngest, serve_kalshi
from flowboard.model import Trade

BASE_MS = 1_760_000_000_000
TRADES = 5000
FAULTS = 50
FAULT_KINDS = (
    "drop",
    "gap",
    "silent",
    "duplicate",
    "garbage",
    "stall",
    "error_25",
    "rest_429",
    "legacy",
    "unknown_type",
    "refuse_and_drop",
)


def wall_ms() -> int:
    return BASE_MS + int(trio.current_time() * 1000)


async def test_thousands_of_trades_through_fifty_faults(
    tmp_path: Path, autojump_clock: Any, record_property: Callable[[str, object], None]
) -> None:
    """5000 trades with 50 injected faults (drops, visible and silent gaps, duplicates, garbage,
    stalls, code 25, 429s, refusals, legacy frames): the parsed trades forwarded are exactly the
    fake's trades, each once, and the ingest task is started once and never fails."""
    rng = random.Random(2026)
    key = session_private_key()
    fake = FakeKalshi(wall_ms=wall_ms, public_keys={"test-key": key.public_key()}, require_auth=True, seed=11)
    received: list[Trade] = []
    ingest_runs = 0
    kinds = list((FAULT_KINDS * FAULTS)[:FAULTS])
    rng.shuffle(kinds)
    fault_at = dict(zip(sorted(rng.sample(range(50, TRADES - 50), FAULTS)), kinds, strict=True))
    send, receive = trio.open_memory_channel[FeedItem](1000)

    async def consume() -> None:
        async for item in receive:
            assert isinstance(item, Received)
            received.append(item.trade)

    async def run_ingest(config: KalshiConfig, *, task_status: trio.TaskStatus[KalshiIngest]) -> None:
        nonlocal ingest_runs
        ingest_runs += 1
        await serve_kalshi(config, send, wall_ms=wall_ms, rng=random.Random(5), task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        nursery.start_soon(consume)
        config = KalshiConfig(
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
            key_id="test-key",
            private_key_path=str(write_test_key(tmp_path)),
            stall_timeout_s=25.0,
            reconcile_interval_s=30.0,
            backoff_initial_s=0.5,
            backoff_max_s=10.0,
            rest_rate_per_s=20.0,
        )
        ingest: KalshiIngest = await nursery.start(run_ingest, config)
        await eventually(lambda: bool(fake.connections and fake.connections[0].subscriptions), poll_s=0.01)
        started = trio.current_time()

        for i in range(TRADES):
            await trio.sleep(rng.expovariate(8.0))  # ~8 trades/s, in bursts and lulls
            kind = fault_at.get(i)
            delivery: Any = "send"
            if kind in ("gap", "silent", "duplicate"):
                delivery = kind
            elif kind == "drop":
                await fake.drop_connections()
            elif kind == "refuse_and_drop":
                fake.refuse_next_connections(2)
                await fake.drop_connections()
            elif kind == "garbage":
                await fake.send_garbage()
            elif kind == "unknown_type":
                await fake.send_unknown_type()
            elif kind == "stall":
                fake.stall()
            elif kind == "error_25":
                await fake.subscription_error(25)
            elif kind == "rest_429":
                fake.rate_limit_next_requests(3)
            if kind == "legacy":
                await fake.publish(fake.random_trade(wall_ms(), legacy_exact=True), delivery="legacy")
            else:
                await fake.publish(fake.random_trade(wall_ms()), delivery=delivery)

        feed_s = trio.current_time() - started
        truth = Counter(t.trade_id for t in fake.trades)
        await eventually(lambda: Counter(t.trade_id for t in received) == truth, timeout_s=600, poll_s=1)
        caught_up_s = trio.current_time() - started - feed_s
        # Several more reconciliation rounds: nothing may arrive twice later on.
        await trio.sleep(4 * config.reconcile_interval_s)
        stats = ingest.statistics()
        nursery.cancel_scope.cancel()

    assert Counter(t.trade_id for t in received) == truth
    assert max(Counter(t.trade_id for t in received).values()) == 1
    assert sorted(received, key=lambda t: t.trade_id) == sorted(fake.trades, key=lambda t: t.trade_id)
    assert ingest_runs == 1
    assert stats.reconnects >= 5 and stats.gaps >= 1 and stats.backfilled >= 1
    assert stats.deduplicated >= 1 and stats.malformed >= 1 and stats.rest_429s >= 1

    figures = {
        "trades": len(fake.trades),
        "faults": len(fault_at),
        "fault_mix": dict(sorted(Counter(fault_at.values()).items())),
        "virtual_feed_s": round(feed_s),
        "virtual_catch_up_s": round(caught_up_s),
        "forwarded": stats.trades_forwarded,
        "connects": stats.connects,
        "reconnects": stats.reconnects,
        "stalls": stats.stalls,
        "gaps": stats.gaps,
        "resubscribes": stats.resubscribes,
        "auth_failures": stats.auth_failures,
        "backfilled": stats.backfilled,
        "deduplicated": stats.deduplicated,
        "malformed": stats.malformed,
        "unknown_types": stats.unknown_types,
        "rest_requests": stats.rest_requests,
        "rest_429s": stats.rest_429s,
    }
    for name, value in figures.items():
        record_property(name, value)
    print("\nKalshi headline run:", figures)

"""Trade store throughput: how fast the batched writer commits and how fast a restart rebuilds.

    python -m bench.store_bench [--write-trades 200000] [--load-trades 1000000] [--runs 3]

(a) write rate: trades offered as fast as a producer can (100 per offer, yielding between offers)
    through the real writer, until all are committed; trades/s, median of the runs.
(b) write rate with the stream running: the same, while a live stream of ``--stream-rate``
    trades/s (default 2,000, ten times a busy Kalshi minute) is aggregated in the same process, so
    the writer's threads compete with the ingest loop for the interpreter (target >= 20,000/s on
    SQLite).
(b') ingest-bound: every trade goes through ``Aggregator.add_trade`` before it is offered, as
    ``Ingestor`` does; the rate of the whole ingest path, where aggregation, not the store, is
    the limit.
(c) rebuild: a busy day, 1,000,000 trades over the last 23 hours, rebuilt the way the server
    starts (``pipeline._rebuild``: store summary + ``Aggregator.restore``), end to end (target
    <= 5 s); against the replay it replaced (every stored trade through ``add_trade``), timed
    once per backend as the baseline.
(d) load time: the same trades read back whole with ``load_trades_since`` in trade-time order.

Both on SQLite (a temporary file) and PostgreSQL (a temporary schema at FLOWBOARD_TEST_POSTGRES_URL,
skipped with a message when unreachable). Prints a table and writes bench/results/store.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import psycopg
import trio

from flowboard.aggregate.aggregator import Aggregator, retention_start_ms
from flowboard.config import Config
from flowboard.model import HOUR_MS, Trade
from flowboard.protocol.session import SessionLimits
from flowboard.server.hub import Hub
from flowboard.server.metrics import Metrics
from flowboard.server.pipeline import _rebuild
from flowboard.server.runtime import Runtime
from flowboard.store import Store, StoreConfig, open_store, serve_writer

POSTGRES_URL = os.environ.get("FLOWBOARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RESULTS_PATH = Path(__file__).parent / "results" / "store.json"
OFFER_SIZE = 100
SEED = 20_260_105
# Timestamps are recent so that retention (7 days) keeps every benchmark trade.
START_MS = (time.time_ns() // 1_000_000) - 3_600_000


def synthetic_trades(count: int, seed: int) -> list[Trade]:
    """Kalshi-shaped trades: a few hundred markets with skewed popularity, uuid trade ids,
    sub-cent prices now and then, fractional counts, bursts of trades in the same millisecond."""
    rng = random.Random(seed)
    series = ["KXBTC", "KXETH", "KXFED", "KXNBAGAME", "KXNFLGAME", "KXHIGHNY", "KXCPI", "KXPRES"]
    tickers = [
        f"{rng.choice(series)}-26JAN{day:02d}-B{strike}" for day in range(1, 31) for strike in range(10)
    ]
    weights = [1 / rank for rank in range(1, len(tickers) + 1)]
    chosen = rng.choices(tickers, weights=weights, k=count)
    trades = []
    ts_ms = START_MS
    for ticker in chosen:
        ts_ms += 0 if rng.random() < 0.3 else rng.randint(1, 5)
        # Prices in $0.000001: whole cents mostly, a tenth of markets at $0.0001 ticks.
        sub_cent = rng.random() < 0.1
        trades.append(
            Trade(
                trade_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                ticker=ticker,
                yes_price=rng.randint(1, 9999) * 100 if sub_cent else rng.randint(1, 99) * 10_000,
                count=rng.choice((100, 100, 500, 1000, 2500))
                if rng.random() < 0.8
                else rng.randint(1, 500_000),
                taker_side="yes" if rng.random() < 0.5 else "no",
                ts_ms=ts_ms,
            )
        )
    return trades


def busy_day(trades: list[Trade], now_ms: int) -> list[Trade]:
    """``trades`` spread evenly (ties kept) over the 23 hours before ``now_ms``, all inside what
    a restart at ``now_ms`` rebuilds."""
    first, last = trades[0].ts_ms, trades[-1].ts_ms
    start = retention_start_ms(now_ms, 600_000) + 1
    span = now_ms - start - 1
    return [attrs.evolve(t, ts_ms=start + (t.ts_ms - first) * span // (last - first)) for t in trades]


# -- targets -------------------------------------------------------------------------------


@contextmanager
def sqlite_target() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="flowboard-bench-") as directory:
        yield str(Path(directory) / "bench.db")


@contextmanager
def postgres_target() -> Iterator[str]:
    schema = f"flowboard_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            separator = "&" if "?" in POSTGRES_URL else "?"
            yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def postgres_unreachable_reason() -> str | None:
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as error:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {error}"
    return None


@asynccontextmanager
async def running_store(db: str, config: StoreConfig) -> AsyncIterator[Store]:
    async with open_store(db, config=config) as store, trio.open_nursery() as nursery:
        await nursery.start(serve_writer, store)
        yield store
        nursery.cancel_scope.cancel()


async def until_written(store: Store, total: int) -> None:
    # Polling every millisecond: the store has no "written" event, and 1 ms is noise next to a run.
    while store.statistics().written_total < total:  # noqa: ASYNC110
        await trio.sleep(0.001)


# -- measurements --------------------------------------------------------------------------


async def measure_write_rate(db: str, trades: list[Trade]) -> dict[str, float]:
    """Offer everything as fast as the producer can, and time until the writer has committed it."""
    config = StoreConfig(queue_max_trades=len(trades))
    async with running_store(db, config) as store:
        started = time.perf_counter()
        for start in range(0, len(trades), OFFER_SIZE):
            store.offer(trades[start : start + OFFER_SIZE])
            await trio.lowlevel.checkpoint()
        offered_s = time.perf_counter() - started
        await until_written(store, len(trades))
        elapsed_s = time.perf_counter() - started
        assert store.statistics().dropped == 0
        return {
            "trades_per_s": len(trades) / elapsed_s,
            "offer_s": offered_s,
            "batches": store.statistics().batches,
        }


async def stream_forever(trades: list[Trade], rate: float) -> None:
    """Aggregate ``trades`` over and over at ``rate`` per second, 10 ms of trades at a time."""
    agg = Aggregator()
    per_tick = max(1, round(rate / 100))
    now_ms = trades[0].ts_ms
    position = 0
    while True:
        now_ms += 10
        for _ in range(per_tick):
            trade = trades[position % len(trades)]
            agg.add_trade(attrs.evolve(trade, trade_id=f"{trade.trade_id}-{position}", ts_ms=now_ms), now_ms)
            position += 1
        await trio.sleep(0.01)


async def measure_write_rate_with_stream(
    db: str, trades: list[Trade], stream: list[Trade], stream_rate: float
) -> dict[str, float]:
    """``measure_write_rate`` while a live stream is aggregated alongside."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream_forever, stream, stream_rate)
        result = await measure_write_rate(db, trades)
        nursery.cancel_scope.cancel()
    return result


async def measure_write_rate_ingest_bound(db: str, trades: list[Trade]) -> dict[str, float]:
    """Like ``measure_write_rate``, but each trade is aggregated before it is offered."""
    config = StoreConfig(queue_max_trades=len(trades))
    agg = Aggregator()
    async with running_store(db, config) as store:
        started = time.perf_counter()
        for start in range(0, len(trades), OFFER_SIZE):
            chunk = trades[start : start + OFFER_SIZE]
            for trade in chunk:
                agg.add_trade(trade, trade.ts_ms)
            store.offer(chunk)
            await trio.lowlevel.checkpoint()
        offered_s = time.perf_counter() - started
        await until_written(store, len(trades))
        elapsed_s = time.perf_counter() - started
        assert store.statistics().dropped == 0
        assert agg.trades_total == len(trades)
        return {
            "trades_per_s": len(trades) / elapsed_s,
            "offer_s": offered_s,
            "batches": store.statistics().batches,
        }


def bench_runtime(store: Store, now_ms: int) -> Runtime:
    agg = Aggregator()
    hub = Hub(agg, epoch="bench", ring_size=1024, limits=SessionLimits())
    return Runtime(config=Config(), agg=agg, hub=hub, metrics=Metrics(), wall_ms=lambda: now_ms, store=store)


async def measure_rebuild(db: str, now_ms: int, expected: int) -> float:
    """The server's start-up rebuild, from opening the store to the aggregator restored."""
    started = time.perf_counter()
    async with open_store(db) as store:
        rebuilt = await _rebuild(bench_runtime(store, now_ms), store)
    elapsed_s = time.perf_counter() - started
    assert rebuilt == expected, (rebuilt, expected)
    return elapsed_s


async def measure_replay(db: str, now_ms: int, expected: int) -> float:
    """The baseline: what ``_rebuild`` did before, every stored trade through ``add_trade``."""
    started = time.perf_counter()
    async with open_store(db) as store:
        agg = Aggregator()
        async for chunk in store.load_trades_since(retention_start_ms(now_ms, agg.window_ms)):
            for trade in chunk:
                agg.add_trade(trade, min(trade.ts_ms, now_ms))
        agg.advance(now_ms)
    elapsed_s = time.perf_counter() - started
    assert agg.trades_total == expected, (agg.trades_total, expected)
    return elapsed_s


async def fill(db: str, trades: list[Trade]) -> None:
    config = StoreConfig(queue_max_trades=len(trades), batch_max_trades=20_000)
    async with running_store(db, config) as store:
        store.offer(trades)
        await until_written(store, len(trades))


async def measure_load_time(db: str, expected: int) -> float:
    """Time to read every stored trade in trade-time order, checking the order as it comes."""
    async with open_store(db) as store:
        started = time.perf_counter()
        loaded = 0
        previous = (0, "")
        async for chunk in store.load_trades_since(0):
            loaded += len(chunk)
            first, last = chunk[0], chunk[-1]
            assert (first.ts_ms, first.trade_id) > previous
            previous = (last.ts_ms, last.trade_id)
        elapsed_s = time.perf_counter() - started
    assert loaded == expected, (loaded, expected)
    return elapsed_s


async def bench_backend(
    backend: str, write_trades: int, load_trades: int, runs: int, *, baseline: bool, stream_rate: float
) -> dict[str, Any]:
    target = sqlite_target if backend == "sqlite" else postgres_target
    write_runs = []
    streaming_runs = []
    ingest_bound_runs = []
    stream = synthetic_trades(10_000, SEED - 1)
    for run in range(runs):
        trades = synthetic_trades(write_trades, SEED + run)
        with target() as db:
            write_runs.append(await measure_write_rate(db, trades))
        with target() as db:
            streaming_runs.append(await measure_write_rate_with_stream(db, trades, stream, stream_rate))
        with target() as db:
            ingest_bound_runs.append(await measure_write_rate_ingest_bound(db, trades))
    now_ms = time.time_ns() // 1_000_000
    day = busy_day(synthetic_trades(load_trades, SEED), now_ms)
    rebuild_runs = []
    load_runs = []
    with target() as db:
        await fill(db, day)
        for _ in range(runs):
            rebuild_runs.append(await measure_rebuild(db, now_ms, load_trades))
            load_runs.append(await measure_load_time(db, load_trades))
        replay_s = await measure_replay(db, now_ms, load_trades) if baseline else None
    rebuild_s = statistics.median(rebuild_runs)
    return {
        "write_trades": write_trades,
        "write_trades_per_s_median": statistics.median(r["trades_per_s"] for r in write_runs),
        "write_runs": write_runs,
        "streaming_write_trades_per_s_median": statistics.median(r["trades_per_s"] for r in streaming_runs),
        "streaming_write_runs": streaming_runs,
        "stream_rate": stream_rate,
        "ingest_bound_trades_per_s_median": statistics.median(r["trades_per_s"] for r in ingest_bound_runs),
        "ingest_bound_runs": ingest_bound_runs,
        "load_trades": load_trades,
        "load_span_hours": (day[-1].ts_ms - day[0].ts_ms) / HOUR_MS,
        "rebuild_s_median": rebuild_s,
        "rebuild_runs_s": rebuild_runs,
        "replay_baseline_s": replay_s,
        "rebuild_speedup": None if replay_s is None else replay_s / rebuild_s,
        "load_s_median": statistics.median(load_runs),
        "load_runs_s": load_runs,
    }


# -- report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, cwd=Path(__file__).parent
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "git_commit": commit or None,
    }


def print_table(results: dict[str, Any], runs: int) -> None:
    print(
        f"\n{'backend':<10} {'write/s':>9} {'+stream/s':>10} {'ingest/s':>9} {'trades':>10} {'rebuild s':>10}"
        f" {'replay s':>9} {'load s':>7}   (medians of {runs} runs; replay once)"
    )
    for backend, result in results.items():
        if "skipped" in result:
            print(f"{backend:<10} skipped: {result['skipped']}")
            continue
        replay = result["replay_baseline_s"]
        print(
            f"{backend:<10} {result['write_trades_per_s_median']:>9,.0f} "
            f"{result['streaming_write_trades_per_s_median']:>10,.0f} "
            f"{result['ingest_bound_trades_per_s_median']:>9,.0f} {result['load_trades']:>10,} "
            f"{result['rebuild_s_median']:>10.2f} {'-' if replay is None else f'{replay:.1f}':>9} "
            f"{result['load_s_median']:>7.2f}"
        )
    print("targets: write with the stream running >= 20,000 trades/s on SQLite; rebuild of 1,000,000 <= 5 s")


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {}
    for backend in args.backends:
        reason = postgres_unreachable_reason() if backend == "postgres" else None
        if reason:
            print(f"postgres: skipped, {reason}", file=sys.stderr)
            results[backend] = {"skipped": reason}
            continue
        print(f"{backend}: running...", file=sys.stderr)
        results[backend] = await bench_backend(
            backend,
            args.write_trades,
            args.load_trades,
            args.runs,
            baseline=not args.no_baseline,
            stream_rate=args.stream_rate,
        )
    print_table(results, args.runs)
    report = {
        "benchmark": "store",
        "command": "python -m bench.store_bench " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "runs": args.runs,
        "config": attrs.asdict(StoreConfig()),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write-trades", type=int, default=200_000, help="trades per write-rate run")
    parser.add_argument("--load-trades", type=int, default=1_000_000, help="trades stored for the load test")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["sqlite", "postgres"])
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    parser.add_argument("--stream-rate", type=float, default=2_000, help="trades/s of the live stream in (b)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the replay baseline (about 30 s per backend)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())

"""Trade store throughput: how fast the batched writer commits and how fast a rebuild loads.

    python -m bench.store_bench [--write-trades 200000] [--load-trades 1000000] [--runs 3]

(a) write rate: trades offered as fast as a producer can (100 per offer, yielding between offers)
    through the real writer, until all are committed; trades/s, median of the runs (target
    >= 20,000/s on SQLite).
(b) load time: 1,000,000 stored trades read back with ``load_trades_since`` in trade-time order
    (target <= 5 s); the raw load, without the aggregation replay.

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

from flowboard.model import Trade
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
        tick = 1 if rng.random() < 0.1 else 100  # a tenth of markets tick at $0.0001
        trades.append(
            Trade(
                trade_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                ticker=ticker,
                yes_price=rng.randint(1, 99) * 100 if tick == 100 else rng.randint(1, 9999),
                count=rng.choice((100, 100, 500, 1000, 2500))
                if rng.random() < 0.8
                else rng.randint(1, 500_000),
                taker_side="yes" if rng.random() < 0.5 else "no",
                ts_ms=ts_ms,
            )
        )
    return trades


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


async def bench_backend(backend: str, write_trades: int, load_trades: int, runs: int) -> dict[str, Any]:
    target = sqlite_target if backend == "sqlite" else postgres_target
    write_runs = []
    for run in range(runs):
        trades = synthetic_trades(write_trades, SEED + run)
        with target() as db:
            write_runs.append(await measure_write_rate(db, trades))
    load_runs = []
    with target() as db:
        await fill(db, synthetic_trades(load_trades, SEED))
        for _ in range(runs):
            load_runs.append(await measure_load_time(db, load_trades))
    return {
        "write_trades": write_trades,
        "write_trades_per_s_median": statistics.median(r["trades_per_s"] for r in write_runs),
        "write_runs": write_runs,
        "load_trades": load_trades,
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
        f"\n{'backend':<10} {'write trades/s':>15} {'load trades':>12} {'load s':>8}"
        f"   (medians of {runs} runs)"
    )
    for backend, result in results.items():
        if "skipped" in result:
            print(f"{backend:<10} skipped: {result['skipped']}")
            continue
        print(
            f"{backend:<10} {result['write_trades_per_s_median']:>15,.0f} "
            f"{result['load_trades']:>12,} {result['load_s_median']:>8.2f}"
        )
    print("targets: write >= 20,000 trades/s on SQLite; load of 1,000,000 trades <= 5 s")


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {}
    for backend in args.backends:
        reason = postgres_unreachable_reason() if backend == "postgres" else None
        if reason:
            print(f"postgres: skipped, {reason}", file=sys.stderr)
            results[backend] = {"skipped": reason}
            continue
        print(f"{backend}: running...", file=sys.stderr)
        results[backend] = await bench_backend(backend, args.write_trades, args.load_trades, args.runs)
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
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())

"""Candle queries on a big store: a busy market's history among 1,000,000 stored trades.

    python -m bench.candles_bench [--trades 1000000] [--runs 7] [--db PATH]

Builds a SQLite file with ``--trades`` trades spread over the last 7 days across 300 markets of
skewed popularity (the busiest holds about a sixth of them), then times, through the store's
public face (``Store.market_candles``, in a worker thread as the API runs it), median of
``--runs``:

- 7 d of 1h candles of the busiest market (target <= 200 ms),
- 24 h of 1m candles of the same market,
- 7 d of 1h candles of a quiet market.

The file is built once per ``--db`` path and reused when it already holds the trades. Writes
bench/results/candles.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from flowboard.model import DAY_MS, HOUR_MS, MINUTE_MS
from flowboard.store import StoreConfig, open_store

RESULTS_PATH = Path(__file__).parent / "results" / "candles.json"
SEED = 20_261_129
MARKETS = 300
TARGET_MS = 200.0


def tickers() -> list[str]:
    return [f"KXBENCH-26DEC{n // 10:02d}-B{n % 10}" for n in range(MARKETS)]


def build(path: Path, count: int, now_ms: int) -> None:
    """``count`` trades over the 7 days before ``now_ms``, written straight into the store's
    schema (the writer's batching is not what this measures)."""
    rng = random.Random(SEED)
    names = tickers()
    weights = [1 / rank for rank in range(1, MARKETS + 1)]
    chosen = rng.choices(names, weights=weights, k=count)
    start_ms = now_ms - 7 * DAY_MS
    step = 7 * DAY_MS / count
    rows = []
    for n, ticker in enumerate(chosen):
        # Prices in $0.000001: whole cents mostly, some $0.0001 ticks; counts in hundredths.
        price = rng.randint(1, 99) * 10_000 + (rng.randint(0, 99) * 100 if n % 10 == 0 else 0)
        rows.append(
            (
                f"t{n:08d}",
                ticker,
                price,
                rng.randint(1, 50_000),
                rng.choice(("yes", "no")),
                int(start_ms + n * step),
                n + 1,
            )
        )
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(
            "INSERT INTO trades (trade_id, ticker, yes_price, count, taker_side, ts_ms, arrival) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    connection.execute("ANALYZE")
    connection.close()


def stored_count(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        (count,) = connection.execute("SELECT COUNT(*) FROM trades").fetchone()
    finally:
        connection.close()
    return int(count)


async def time_query(
    db: str, ticker: str, interval_ms: int, since_ms: int, limit: int, runs: int
) -> dict[str, Any]:
    async with open_store(db, config=StoreConfig(retention_days=3650)) as store:
        timings = []
        candles = 0
        for _ in range(runs):
            started = time.perf_counter()
            page = await store.market_candles(ticker, interval_ms, since_ms, limit)
            timings.append((time.perf_counter() - started) * 1000)
            candles = len(page.candles)
    return {
        "median_ms": round(statistics.median(timings), 1),
        "min_ms": round(min(timings), 1),
        "max_ms": round(max(timings), 1),
        "candles": candles,
    }


async def main(args: argparse.Namespace) -> None:
    path = args.db or Path(tempfile.mkdtemp(prefix="flowboard-candles-")) / "candles.db"
    now_ms = time.time_ns() // 1_000_000
    async with open_store(str(path), config=StoreConfig(retention_days=3650)):
        pass  # creates the schema and applies every migration
    if stored_count(path) != args.trades:
        if stored_count(path):
            raise SystemExit(f"{path} holds other trades; give another --db")
        started = time.perf_counter()
        build(path, args.trades, now_ms)
        print(f"built {args.trades:,} trades in {time.perf_counter() - started:.1f} s: {path}")
    connection = sqlite3.connect(path)
    (newest,) = connection.execute("SELECT MAX(ts_ms) FROM trades").fetchone()
    per_market = dict(connection.execute("SELECT ticker, COUNT(*) FROM trades GROUP BY ticker").fetchall())
    connection.close()
    busiest = max(per_market, key=lambda t: per_market[t])
    quiet = min(per_market, key=lambda t: per_market[t])
    cases = {
        "busiest 7d 1h": (busiest, HOUR_MS, newest - 7 * DAY_MS, 7 * 24 + 1),
        "busiest 24h 1m": (busiest, MINUTE_MS, newest - DAY_MS, 24 * 60 + 1),
        "quiet 7d 1h": (quiet, HOUR_MS, newest - 7 * DAY_MS, 7 * 24 + 1),
    }
    results: dict[str, Any] = {
        "trades": args.trades,
        "runs": args.runs,
        "busiest_market_trades": per_market[busiest],
        "quiet_market_trades": per_market[quiet],
        "cases": {},
    }
    for name, (ticker, interval_ms, since_ms, limit) in cases.items():
        result = await time_query(str(path), ticker, interval_ms, since_ms, limit, args.runs)
        results["cases"][name] = result
        print(
            f"{name:>16}: median {result['median_ms']:7.1f} ms "
            f"(min {result['min_ms']}, max {result['max_ms']}), {result['candles']} candles"
        )
    verdict = results["cases"]["busiest 7d 1h"]["median_ms"] <= TARGET_MS
    results["target_met"] = verdict
    print(
        f"busiest market: {per_market[busiest]:,} trades; 7 d of 1h candles within {TARGET_MS:.0f} ms: "
        f"{'yes' if verdict else 'NO'}"
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file to build or reuse")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())

"""Crash and restart, for real: ``flowboard serve`` killed with SIGKILL at 20 seeded-random
moments while the simulator streams into its SQLite store, restarted each time.

After each kill the store file is read directly: those are the trades committed before the
kill. A server then started on the file, with a source that adds nothing, must show exactly
the state of replaying them (``tests/test_rebuild.py`` defines the replay). The loss window is
measured too: just before each kill, ``/metrics`` says how many accepted trades were not yet
committed, and every trade committed by then must survive the kill.
"""

from __future__ import annotations

import random
import re
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import starmap
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from test_rebuild import replayed

from flowboard.aggregate.aggregator import Aggregator
from flowboard.model import USD_DECIMALS, MarketMeta, Trade, units_text
from flowboard.server.app import analytics_json, market_json, trade_json

pytestmark = pytest.mark.slow

FLOWBOARD = [sys.executable, "-m", "flowboard", "serve", "--port", "0"]
KILLS = 20
LISTENING = re.compile(r"flowboard listening on (http://\S+)")
#: The writer commits every 0.2 s or every 1,000 trades (StoreConfig's defaults).
BATCH_INTERVAL_S = 0.2
RATE = 200


@contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A ``flowboard serve`` process and its URL, once it says it is listening; killed on exit."""
    process = subprocess.Popen(
        [*FLOWBOARD, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        yield process, _wait_for_url(process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def _wait_for_url(process: subprocess.Popen[str], timeout_s: float = 30) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                line = process.stdout.readline()
                if not line:
                    break
                if match := LISTENING.search(line):
                    return match.group(1)
    raise AssertionError(f"flowboard serve did not report listening (exit code {process.poll()})")


def stored_trades(db: Path) -> list[Trade]:
    """Every committed trade in arrival order, read with sqlite3 as any other client would."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT trade_id, ticker, yes_price, count, taker_side, ts_ms FROM trades ORDER BY arrival"
        ).fetchall()
    return list(starmap(Trade, rows))


def stored_metas(db: Path) -> list[MarketMeta]:
    """The market metadata stored (the simulators'), in the order a restart sets it."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT ticker, title, category, close_ts_ms, event_ticker, series_ticker, "
            "open_interest, liquidity FROM markets ORDER BY ticker"
        ).fetchall()
    return list(starmap(MarketMeta, rows))


def metric(text: str, name: str) -> int:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return int(float(match.group(1)))


def api_state(http: httpx.Client) -> dict[str, Any]:
    """The aggregated state as the API shows it, read between two ticks of the clock."""
    while True:
        state = {
            "stats": http.get("/api/stats").json(),
            "hot": http.get("/api/markets/hot").json(),
            "hour": http.get("/api/analytics", params={"mode": "hour"}).json(),
            "day": http.get("/api/analytics", params={"mode": "day"}).json(),
            "top": http.get("/api/trades/top").json(),
            "recent": http.get("/api/trades/recent", params={"limit": 200}).json(),
        }
        if http.get("/api/stats").json()["now_ms"] == state["stats"]["now_ms"]:
            return state


def reference_state(agg: Aggregator) -> dict[str, Any]:
    """What the API would say for ``agg``: the same JSON shapes, from the reference replay."""
    trades, usd = agg.today()
    state = {
        "stats": {
            "now_ms": agg.now_ms,
            "today": {"trades": trades, "usd_volume": units_text(usd, USD_DECIMALS, 6)},
            "trades_total": agg.trades_total,
            "active_markets": agg.active_markets(),
            "markets": agg.markets_count(),
        },
        "hot": {"markets": [dict(market_json(agg, m), rank=rank) for rank, m in enumerate(agg.hot(), 1)]},
        "hour": analytics_json(agg, "hour"),
        "day": analytics_json(agg, "day"),
        "top": {"trades": [trade_json(t) for t in agg.top_trades()]},
        "recent": {"trades": [trade_json(t) for t in agg.recent_trades(200)]},
    }
    return dict(orjson.loads(orjson.dumps(state)))


def test_sigkill_while_ingesting_loses_at_most_the_unflushed_batch(tmp_path: Path) -> None:
    """20 kills: after each, a restarted server equals the replay of every committed trade,
    and no trade committed before the kill is lost; the loss window is what was queued."""
    rng = random.Random(20_260_105)
    db = tmp_path / "fb.db"
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    losses = []
    stored: list[Trade] = []
    for kill in range(KILLS):
        stored_before = len(stored)
        ingest = ["--db", str(db), "--rate", str(RATE), "--sim-history", "0", "--seed", str(kill)]
        with serving(*ingest) as (_, url), httpx.Client(base_url=url, timeout=10) as http:
            time.sleep(rng.uniform(0.2, 1.0))
            metrics = http.get("/metrics").text
        # Killed on leaving the block, a few milliseconds after the metrics were read.
        ingested = metric(metrics, "flowboard_trades_ingested_total")
        written = metric(metrics, "flowboard_store_written")
        stored = stored_trades(db)
        losses.append(ingested - written)
        assert written > 0, "the kill came before the first commit: the test proves nothing"
        assert len(stored) - stored_before >= written, "a committed trade did not survive the kill"

        with (
            serving("--db", str(db), "--source", "replay", str(empty)) as (_, url),
            httpx.Client(base_url=url, timeout=10) as http,
        ):
            shown = api_state(http)
        del shown["stats"]["clients"], shown["stats"]["clients_by_protocol"], shown["stats"]["seq"]
        # A restart describes the markets it restored: those with a trade since the horizon.
        reference = Aggregator()
        replayed(reference, stored, shown["stats"]["now_ms"])
        for meta in stored_metas(db):
            if reference.market_id(meta.ticker) is not None:
                reference.set_meta(meta)
        assert shown == reference_state(reference), f"after kill {kill + 1}"
        assert shown["stats"]["trades_total"] == len(stored)
    print(f"\nuncommitted just before each kill: max {max(losses)}, all {losses}", file=sys.stderr)
    # One batch interval of trades at the feed's rate, with room for the simulator's bursts.
    assert max(losses) <= RATE * BATCH_INTERVAL_S * 3, losses

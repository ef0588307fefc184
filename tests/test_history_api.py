"""The history API through the real server: candles and CSV exports of trades stored before it
started, checked against a plain recomputation from those trades (``reference_candles``,
``reference_export``) with exact decimal strings; and bad parameters answered with a 400 in
our words.

The server runs in a thread of its own (real time, a real SQLite file, the simulator); the
trades under test are in markets of their own, which the simulator never trades.
"""

from __future__ import annotations

import csv
import io
import queue
import random
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from functools import partial
from pathlib import Path
from typing import cast

import attrs
import httpx
import pytest
import trio
from reference_aggregator import reference_candles, reference_export
from test_store import wait_until

from flowboard.aggregate.aggregator import Aggregator
from flowboard.config import Config, make_config
from flowboard.errors import StoreError
from flowboard.model import DAY_MS, HOUR_MS, MINUTE_MS, MarketMeta, Trade
from flowboard.server.app import create_app
from flowboard.server.hub import Hub
from flowboard.server.metrics import Metrics
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.store import CandlePage, StoreConfig, StoreStatistics, open_store, serve_writer

NOW_MS = time.time_ns() // 1_000_000
#: Two days ago on an hour boundary: inside retention, outside the live windows.
START_MS = (NOW_MS - 2 * DAY_MS) // HOUR_MS * HOUR_MS
TICKERS = ("KXHISTA-26DEC01-T1", "KXHISTB-26DEC01-B2.5", "KXHISTC-26DEC01-T3")
METAS = (
    MarketMeta(TICKERS[0], title="Bitcoin above 101,999.99?", category="Crypto"),
    MarketMeta(TICKERS[1], title="Highest temperature in NYC", category="Climate"),
    MarketMeta(TICKERS[2], title="Fed cuts rates?", category="Economics"),
)


def history_trades() -> list[Trade]:
    """Seeded trades in the order they arrived: sub-cent prices, fractional counts, runs of
    trades in one millisecond, across minute and hour edges and a gap of hours."""
    rng = random.Random(12)
    trades = []
    ts = START_MS - 1
    for n in range(400):
        if rng.random() < 0.6:
            ts += rng.choice((0, 0, 1, 997, MINUTE_MS - 1, 7_000))
        if n == 200:
            ts += 5 * HOUR_MS
        price = rng.choice((rng.randint(1, 999_999), rng.randint(1, 99) * 10_000))
        trades.append(
            Trade(
                f"hist-{n:04d}",
                rng.choice(TICKERS),
                price,
                rng.randint(1, 500_000),
                rng.choice(("yes", "no")),
                ts,
            )
        )
    return trades


TRADES = history_trades()


@attrs.frozen
class ServerInThread:
    url: str
    runtime: Runtime
    token: trio.lowlevel.TrioToken


async def _store_trades(db: Path) -> None:
    async with open_store(str(db), config=StoreConfig()) as store, trio.open_nursery() as nursery:
        await nursery.start(serve_writer, store)
        await store.save_meta(METAS)
        store.offer(TRADES)
        await wait_until(lambda: store.statistics().written_total == len(TRADES))
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInThread]:
    """One real server for the module, over a store that already holds ``TRADES``."""
    db = tmp_path_factory.mktemp("history") / "flowboard.db"
    trio.run(_store_trades, db)
    config = make_config(port=0, rate=20.0, seed=3, db=str(db))
    started: queue.Queue[ServerInThread | BaseException] = queue.Queue(1)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            runtime: Runtime = await nursery.start(partial(run_server, config))
            started.put(ServerInThread(runtime.url, runtime, trio.lowlevel.current_trio_token()))

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the test thread, which fails with it
            started.put(exc)

    thread = threading.Thread(target=run, name="flowboard-history-server", daemon=True)
    thread.start()
    running = started.get(timeout=30)
    if isinstance(running, BaseException):
        raise running
    yield running
    trio.from_thread.run_sync(running.runtime.request_stop, trio_token=running.token)
    thread.join(timeout=15)
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def http(server: ServerInThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def price_text(units: int) -> str:
    """Independent of the server's formatting: at least 4 decimals, more only when needed."""
    whole, frac = divmod(units, 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(4, "0")
    return f"{whole}.{digits}"


def usd_text(units: int) -> str:
    whole, frac = divmod(units, 10**8)
    return f"{whole}.{f'{frac:08d}'.rstrip('0').ljust(6, '0')}"


def count_text(units: int) -> str:
    whole, frac = divmod(units, 100)
    return f"{whole}.{frac:02d}"


@pytest.mark.parametrize(("interval", "interval_ms"), [("1m", MINUTE_MS), ("1h", HOUR_MS)])
@pytest.mark.parametrize("ticker", TICKERS)
def test_candles_are_those_of_the_stored_trades(
    http: httpx.Client, interval: str, interval_ms: int, ticker: str
) -> None:
    """Every page of candles, followed by ``next``, equals the recomputation from the stored
    trades, as exact decimal strings; each page holds at most ``limit`` periods."""
    since = START_MS - HOUR_MS
    got = []
    pages = 0
    while True:
        response = http.get(
            f"/api/markets/{ticker}/candles", params={"interval": interval, "since": since, "limit": 50}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        expected, expected_next = reference_candles(TRADES, ticker, interval_ms, since, 50)
        assert body["candles"] == [
            {
                "start_ms": c.start_ms,
                "open": price_text(c.open),
                "high": price_text(c.high),
                "low": price_text(c.low),
                "close": price_text(c.close),
                "usd_volume": usd_text(c.usd),
                "trades": c.trades,
            }
            for c in expected
        ]
        assert body["last_trade_ms"] == (expected[-1].last_trade_ms if expected else None)
        got += body["candles"]
        pages += 1
        if expected_next is None:
            assert "next" not in body
            break
        assert body["next"] == {"since": expected_next}
        since = expected_next
    assert sum(c["trades"] for c in got) == sum(1 for t in TRADES if t.ticker == ticker)
    assert pages >= 2 if interval == "1m" else pages >= 1


def test_candles_at_the_end_of_time_are_an_empty_page(http: httpx.Client) -> None:
    """The latest ``since`` the store's 64-bit times allow is a valid, empty page."""
    params = {"since": str(2**63 - 1), "limit": "10000"}
    response = http.get(f"/api/markets/{TICKERS[0]}/candles", params=params)
    assert response.status_code == 200
    assert response.json()["candles"] == [] and "next" not in response.json()


def test_candles_default_to_the_last_day_of_minutes(http: httpx.Client) -> None:
    """Without ``since``, 1m candles start a day before now and 1h candles 7 days before: the
    stored trades, two days old, show in the hour candles only."""
    minutes = http.get(f"/api/markets/{TICKERS[0]}/candles").json()
    hours = http.get(f"/api/markets/{TICKERS[0]}/candles", params={"interval": "1h"}).json()
    assert minutes["candles"] == [] and minutes["interval_ms"] == MINUTE_MS
    assert sum(c["trades"] for c in hours["candles"]) == sum(1 for t in TRADES if t.ticker == TICKERS[0])


def parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def rows_of(trades: list[Trade]) -> list[list[str]]:
    def iso(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"

    return [
        [
            t.trade_id,
            iso(t.ts_ms),
            str(t.ts_ms),
            t.ticker,
            t.taker_side,
            price_text(t.yes_price),
            price_text(1_000_000 - t.yes_price),
            count_text(t.count),
            usd_text(t.usd),
        ]
        for t in trades
    ]


HEADER = [
    "trade_id",
    "time_utc",
    "ts_ms",
    "ticker",
    "taker_side",
    "yes_price",
    "no_price",
    "count",
    "usd_volume",
]


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (None, None),
        (START_MS, START_MS + MINUTE_MS),
        (START_MS + 1, START_MS + 5 * HOUR_MS),
        (START_MS, START_MS),
    ],
    ids=["everything", "first-minute", "from-1ms-on", "empty"],
)
def test_a_market_export_is_its_trades_in_range(
    http: httpx.Client, since: int | None, until: int | None
) -> None:
    """A market's CSV: one header row, then its trades in [since, until) by time and arrival,
    exact decimals, ISO UTC times; a download with a file name."""
    params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
    response = http.get(f"/api/markets/{TICKERS[1]}/trades.csv", params=params)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith(f'attachment; filename="flowboard-{TICKERS[1]}-') and disposition.endswith(
        '.csv"'
    )
    expected = reference_export(TRADES, since or 0, until or 2**63 - 1, TICKERS[1], 0)
    assert parse_csv(response.text) == [HEADER, *rows_of(expected)]


@pytest.mark.parametrize(
    "params",
    [
        {"q": "kxhista"},
        {"q": "TEMPERATURE"},
        {"category": "Economics"},
        {"min_usd": "1000"},
        {"min_usd": "0.5", "q": "kxhist", "category": "Crypto"},
    ],
    ids=["ticker-text", "title-text", "category", "min-usd", "all-three"],
)
def test_the_tape_export_applies_the_tapes_filter(http: httpx.Client, params: dict[str, str]) -> None:
    """/api/trades.csv with the tape's filter: text in the ticker or title (any case), category,
    $ floor in dollars, like the tape on the page; the simulator's markets are left out by the
    range (before the server started)."""
    until = START_MS + DAY_MS
    response = http.get("/api/trades.csv", params={**params, "until": str(until)})
    assert response.status_code == 200
    metas = {m.ticker: m for m in METAS}
    text = params.get("q", "").lower()
    floor = {"1000": 1000 * 10**8, "0.5": 50_000_000}.get(params.get("min_usd", ""), 0)
    expected = [
        t
        for t in reference_export(TRADES, 0, until, None, floor)
        if (not text or text in t.ticker.lower() or text in metas[t.ticker].title.lower())
        and params.get("category", metas[t.ticker].category) == metas[t.ticker].category
    ]
    assert expected, "the filter should pass some trades"
    rows = parse_csv(response.text)
    assert rows[0] == HEADER
    assert rows[1:] == rows_of(expected)
    assert 'filename="flowboard-trades-' in response.headers["Content-Disposition"]


def test_a_large_export_is_streamed(http: httpx.Client) -> None:
    """An export is sent as it is read (chunked), not as one body of known length."""
    with http.stream("GET", "/api/trades.csv") as response:
        assert response.status_code == 200
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in response.headers
        lines = sum(chunk.count("\n") for chunk in response.iter_text())
    assert lines >= len(TRADES) + 1


@pytest.mark.parametrize(
    ("path", "params", "error"),
    [
        ("/api/markets/X/candles", {"interval": "5m"}, "interval must be '1m' or '1h', got '5m'"),
        ("/api/markets/X/candles", {"since": "-1"}, "since must be a time in Unix ms from 0 to"),
        ("/api/markets/X/candles", {"limit": "10001"}, "limit must be a whole number from 1 to 10000"),
        ("/api/markets/X/trades.csv", {"until": "1e3"}, "until must be a time in Unix ms from 0 to"),
        ("/api/markets/X/trades.csv", {"since": "10", "until": "9"}, "until must not be before since"),
        (
            "/api/trades.csv",
            {"min_usd": "-5"},
            "min_usd must be a dollar amount such as 1000 or 0.50, got '-5'",
        ),
        ("/api/trades.csv", {"min_usd": "0.000000001"}, "min_usd must be a dollar amount"),
        ("/api/trades.csv", {"min_usd": "NaN"}, "min_usd must be a dollar amount"),
        # Past what SQL's 64-bit integers compare: a 400, not the 503 of a failing database.
        ("/api/trades.csv", {"min_usd": "100000000000"}, "min_usd must be at most 92,233,720,368 dollars"),
        ("/api/trades.csv", {"q": "x" * 201}, "q must be at most 200 characters"),
    ],
)
def test_bad_history_parameters_are_a_400_in_our_words(
    http: httpx.Client, path: str, params: dict[str, str], error: str
) -> None:
    """A parameter the history API cannot take is refused with a 400 saying what it expected."""
    response = http.get(path, params=params)
    assert response.status_code == 400
    assert error in response.json()["error"]


@attrs.frozen
class _DownStore:
    """A store whose database is away: every read fails as the real one does."""

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            queued=0,
            written_total=0,
            batches=0,
            failures=1,
            dropped=0,
            rejected=0,
            last_error="down",
            healthy=False,
            last_commit_ms=None,
        )

    async def market_candles(self, ticker: str, interval_ms: int, since_ms: int, limit: int) -> CandlePage:
        raise StoreError("SQLite /srv/secret.db: reading a market's candles failed: disk I/O error")

    async def export_trades(
        self, since_ms: int, until_ms: int, *, ticker: str | None = None, min_usd: int = 0
    ) -> AsyncGenerator[list[Trade]]:
        raise StoreError("SQLite /srv/secret.db: exporting trades failed: disk I/O error")
        yield []  # an async generator, as the real one is


@pytest.mark.parametrize(
    "path", ["/api/markets/X/candles", "/api/markets/X/trades.csv", "/api/trades.csv?min_usd=1"]
)
async def test_history_while_the_database_is_away_is_a_503(path: str) -> None:
    """Candles and exports while the database is away: 503 saying to try again, naming no file."""
    runtime = Runtime(
        config=Config(), agg=Aggregator(), hub=cast(Hub, None), metrics=Metrics(), wall_ms=lambda: NOW_MS
    )
    runtime.store = _DownStore()  # type: ignore[assignment]
    response = await create_app(runtime).test_client().get(path)
    assert response.status_code == 503
    body = await response.get_json()
    assert body == {"error": "the trade history is not available right now; try again later"}

"""A market's history from the store, on SQLite and PostgreSQL: candles computed in SQL equal
a plain-Python recomputation from the same trades (``reference_candles``), and exports give
exactly the trades in range, in (ts_ms, arrival) order, a bounded chunk at a time."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import attrs
import pytest
import test_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_aggregator import reference_candles, reference_export
from test_store import FAST, running_store, wait_until

from flowboard.model import HOUR_MS, MINUTE_MS, ONE_DOLLAR, Trade
from flowboard.store import CANDLE_INTERVALS_MS, Store
from flowboard.store._history import page_span

# test_store's fixtures: each test runs on SQLite and on PostgreSQL.
db_url = test_store.db_url
postgres_url = test_store.postgres_url

#: A minute boundary, so that generated times fall on both sides of minute and hour edges.
BASE_MS = 1_764_000_000_000 - 1_764_000_000_000 % HOUR_MS

prices = st.one_of(
    st.integers(1, ONE_DOLLAR - 1),  # sub-cent
    st.integers(1, 99).map(lambda cents: cents * 10_000),  # whole cents
    st.sampled_from((1, ONE_DOLLAR - 1, 500_000)),
)
counts = st.one_of(st.integers(1, 10_000_00), st.integers(1, 99))  # fractional contracts too
# Few distinct times, around minute and hour edges: same-millisecond trades are common.
times = st.sampled_from(
    (
        BASE_MS - 1,
        BASE_MS,
        BASE_MS + 1,
        BASE_MS + MINUTE_MS - 1,
        BASE_MS + MINUTE_MS,
        BASE_MS + 3 * MINUTE_MS + 17,
        BASE_MS + HOUR_MS - 1,
        BASE_MS + HOUR_MS,
        BASE_MS + 2 * HOUR_MS + 5,
        BASE_MS + 30 * HOUR_MS,
    )
)


def trade_lists(tickers: tuple[str, ...]) -> st.SearchStrategy[list[tuple[str, int, int, str, int]]]:
    return st.lists(
        st.tuples(st.sampled_from(tickers), prices, counts, st.sampled_from(("yes", "no")), times),
        min_size=1,
        max_size=40,
    )


def with_ids(rows: list[tuple[str, int, int, str, int]], prefix: str) -> list[Trade]:
    return [
        Trade(f"{prefix}-{n}", f"{prefix}-{ticker}", price, count, side, ts)  # type: ignore[arg-type]
        for n, (ticker, price, count, side, ts) in enumerate(rows)
    ]


async def stored(store: Store, trades: list[Trade]) -> None:
    """Offer ``trades`` in this order (their arrival order) and wait until they are written."""
    before = store.statistics().written_total
    store.offer(trades)
    await wait_until(lambda: store.statistics().written_total >= before + len(trades))


#: Exports read 7 trades per query, so that chunks show. A store is opened per Hypothesis example:
#: the lock and connect timeouts are a real store's, so a busy database server fails no example.
CHUNKED = attrs.evolve(FAST, export_chunk_trades=7, lock_timeout_s=5.0, connect_timeout_s=10.0)


@pytest.fixture
async def history_store(db_url: str) -> AsyncIterator[Store]:
    """A running store whose exports read 7 trades per query."""
    async with running_store(db_url, CHUNKED) as store:
        yield store


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=trade_lists(("A", "B")),
    interval=st.sampled_from(sorted(CANDLE_INTERVALS_MS)),
    since_offset=st.sampled_from((-HOUR_MS - 1, -1, 0, 1, MINUTE_MS, 2 * HOUR_MS)),
    limit=st.integers(1, 40),
)
async def test_candles_equal_a_recomputation(
    db_url: str,
    rows: list[tuple[str, int, int, str, int]],
    interval: str,
    since_offset: int,
    limit: int,
) -> None:
    """Open/high/low/close by (time, arrival), $ volume and trade count per period, the page's
    bounds and the next page's start are those of a plain recomputation from the same trades,
    with sub-cent prices, fractional counts and trades sharing a millisecond."""
    prefix = uuid.uuid4().hex[:10]
    trades = with_ids(rows, prefix)
    interval_ms = CANDLE_INTERVALS_MS[interval]
    since = BASE_MS + since_offset
    # A store per example: each Hypothesis example runs in a trio run of its own.
    async with running_store(db_url, CHUNKED) as store:
        await stored(store, trades)
        page = await store.market_candles(f"{prefix}-A", interval_ms, since, limit)
    expected, expected_next = reference_candles(trades, f"{prefix}-A", interval_ms, since, limit)
    got = [attrs.astuple(c) for c in page.candles]
    assert got == [attrs.astuple(c) for c in expected]
    assert page.next_since_ms == expected_next


async def test_paging_through_candles_gives_every_candle_once(history_store: Store) -> None:
    """Following ``next_since_ms`` from the first page yields every period with a trade once,
    skipping the empty periods between them, and ends with None."""
    prefix = uuid.uuid4().hex[:10]
    gaps = (0, 1, 2, 50, 51, 900, 901, 902)
    trades = [
        Trade(f"{prefix}-{n}", prefix, 10_000 * (n + 1), 100, "yes", BASE_MS + gap * MINUTE_MS + n)
        for n, gap in enumerate(gaps)
    ]
    await stored(history_store, trades)
    starts = []
    since: int | None = BASE_MS
    pages = 0
    while since is not None:
        page = await history_store.market_candles(prefix, MINUTE_MS, since, 2)
        starts += [c.start_ms for c in page.candles]
        since = page.next_since_ms
        pages += 1
    assert starts == [BASE_MS + gap * MINUTE_MS for gap in gaps]
    assert pages == 5  # [0,1] [2] (50 after a jump) [50,51] [900,901] [902]


def test_a_page_spans_whole_periods_from_the_one_since_falls_in() -> None:
    """``since`` inside a period starts the page at that period; the page ends ``limit``
    periods later."""
    assert page_span(BASE_MS + 59_999, MINUTE_MS, 3) == (BASE_MS, BASE_MS + 3 * MINUTE_MS)
    assert page_span(BASE_MS + HOUR_MS, HOUR_MS, 1) == (BASE_MS + HOUR_MS, BASE_MS + 2 * HOUR_MS)


async def test_a_period_beyond_64_bits_is_summed_exactly(history_store: Store) -> None:
    """Trades whose $ volume SQL cannot hold in 64 bits (alone, or summed over a period) still
    get their exact $ volume."""
    prefix = uuid.uuid4().hex[:10]
    huge = 2**62  # hundredths of a contract: the product with any price overflows 64 bits
    big = 9 * 10**12  # each product fits, the period's sum does not
    trades = [
        Trade(f"{prefix}-h", f"{prefix}-H", 400_000, huge, "no", BASE_MS),
        *(Trade(f"{prefix}-b{n}", f"{prefix}-B", 999_999, big, "yes", BASE_MS + n) for n in range(3)),
    ]
    await stored(history_store, trades)
    (alone,) = (await history_store.market_candles(f"{prefix}-H", MINUTE_MS, BASE_MS, 1)).candles
    assert alone.usd == huge * 600_000
    (summed,) = (await history_store.market_candles(f"{prefix}-B", MINUTE_MS, BASE_MS, 1)).candles
    assert summed.usd == 3 * big * 999_999


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=trade_lists(("A", "B", "C")),
    since_offset=st.sampled_from((-1, 0, 1, MINUTE_MS)),
    until_offset=st.sampled_from((0, 1, HOUR_MS, 31 * HOUR_MS)),
    one_market=st.booleans(),
    min_usd=st.sampled_from((0, 1, 50 * 10**8, 10**12)),
)
async def test_an_export_gives_the_trades_in_range_a_chunk_at_a_time(
    db_url: str,
    rows: list[tuple[str, int, int, str, int]],
    since_offset: int,
    until_offset: int,
    one_market: bool,
    min_usd: int,
) -> None:
    """An export yields exactly the trades in [since, until) of the market (or of every market
    here) of at least the $ floor, by (time, arrival), in chunks of at most the configured
    size."""
    prefix = uuid.uuid4().hex[:10]
    trades = with_ids(rows, prefix)
    since, until = BASE_MS + since_offset, BASE_MS + until_offset
    ticker = f"{prefix}-A" if one_market else None
    async with running_store(db_url, CHUNKED) as store:
        await stored(store, trades)
        chunks = [c async for c in store.export_trades(since, until, ticker=ticker, min_usd=min_usd)]
    assert all(1 <= len(chunk) <= 7 for chunk in chunks)
    got = [t for t in itertools.chain.from_iterable(chunks) if t.trade_id.startswith(prefix)]
    expected = reference_export(trades, since, until, ticker, min_usd)
    assert got == expected


async def test_an_export_reads_one_chunk_per_step(history_store: Store) -> None:
    """The export is lazy: each chunk is read when the consumer asks for it, so a large range
    never sits in memory whole."""
    prefix = uuid.uuid4().hex[:10]
    trades = [Trade(f"{prefix}-{n:03d}", prefix, 500_000, 100, "yes", BASE_MS + n // 3) for n in range(30)]
    await stored(history_store, trades)
    database = history_store._database  # type: ignore[attr-defined]
    calls = 0
    original = database.trades_between

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return original(*args)

    database.trades_between = counting
    export = history_store.export_trades(BASE_MS, BASE_MS + HOUR_MS, ticker=prefix)
    first = await anext(export)
    assert (len(first), calls) == (7, 1)
    rest = [chunk async for chunk in export]
    assert [len(chunk) for chunk in rest] == [7, 7, 7, 2]
    assert calls == 6  # the last, empty read says the export is complete

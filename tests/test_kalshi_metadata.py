"""Market metadata fetcher against the fake Kalshi (autojump clock)."""

from __future__ import annotations

from typing import Any

import trio
from fake_kalshi import TICKERS, FakeKalshi, eventually

from flowboard.ingest.kalshi import KalshiConfig
from flowboard.ingest.kalshi_rest import TokenBucket
from flowboard.ingest.metadata import MetadataFetcher, build_meta, serve_metadata
from flowboard.model import MarketMeta, is_parlay

BASE_MS = 1_760_000_000_000


def wall_ms() -> int:
    return BASE_MS + int(trio.current_time() * 1000)


async def _run(
    fake: FakeKalshi,
    tickers: list[str],
    *,
    rate_per_s: float = 10.0,
    ttl_s: float = 3600.0,
    wait_s: float = 30.0,
) -> tuple[list[MarketMeta], MetadataFetcher]:
    metas: list[MarketMeta] = []
    send, receive = trio.open_memory_channel[str](1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        config = KalshiConfig(rest_url=fake.rest_url)
        fetcher = await nursery.start(
            lambda task_status: serve_metadata(
                config,
                receive,
                metas.append,
                wall_ms=wall_ms,
                rate_per_s=rate_per_s,
                ttl_s=ttl_s,
                batch_size=3,
                task_status=task_status,
            )
        )
        for ticker in tickers:
            send.send_nowait(ticker)
        await trio.sleep(wait_s)
        nursery.cancel_scope.cancel()
    return metas, fetcher


async def test_metadata_in_batches_with_titles_and_categories(autojump_clock: Any) -> None:
    """Tickers are described in /markets batches; event and series are fetched once each (cached)."""
    fake = FakeKalshi(wall_ms=wall_ms)
    metas, fetcher = await _run(fake, [*TICKERS, *TICKERS])
    by_ticker = {m.ticker: m for m in metas}
    assert sorted(by_ticker) == sorted(TICKERS) and len(metas) == len(TICKERS)
    assert [len(b) for b in fake.markets_batches] == [3, 3, 1]
    assert by_ticker["KXNFLGAME-25SEP25SEAARI-SEA"] == MarketMeta(
        ticker="KXNFLGAME-25SEP25SEAARI-SEA",
        title="Event KXNFLGAME-25SEP25SEAARI — SEA",
        category="Sports",
        close_ts_ms=1798758000000,
        event_ticker="KXNFLGAME-25SEP25SEAARI",
        series_ticker="KXNFLGAME",
    )
    events = {t.rsplit("-", 1)[0] for t in TICKERS}
    assert fake.counts["rest:events"] == len(events)
    assert fake.counts["rest:series"] == len({t.split("-")[0] for t in TICKERS})
    assert fetcher.statistics().described == len(TICKERS)


async def test_metadata_request_rate_is_bounded(autojump_clock: Any) -> None:
    """At 2 requests/s, the ~19 requests for 7 markets take about 9 s of trio time, not less."""
    fake = FakeKalshi(wall_ms=wall_ms)
    done_at: list[float] = []
    metas: list[MarketMeta] = []

    def note(meta: MarketMeta) -> None:
        metas.append(meta)
        done_at.append(trio.current_time())

    send, receive = trio.open_memory_channel[str](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        start = trio.current_time()
        await nursery.start(
            lambda task_status: serve_metadata(
                KalshiConfig(rest_url=fake.rest_url),
                receive,
                note,
                wall_ms=wall_ms,
                rate_per_s=2.0,
                batch_size=3,
                task_status=task_status,
            )
        )
        for ticker in TICKERS:
            send.send_nowait(ticker)
        await eventually(lambda: len(metas) == len(TICKERS))
        nursery.cancel_scope.cancel()
    requests = sum(v for k, v in fake.counts.items() if k.startswith("rest:"))
    assert requests == 3 + 5 + 5  # 3 batches, 5 events, 5 series
    # A burst of 2, then 2 per second.
    assert done_at[-1] - start >= (requests - 2) / 2.0 - 0.5


async def test_metadata_backs_off_on_429(autojump_clock: Any) -> None:
    """429 answers are waited out with backoff and counted; the descriptions still arrive."""
    fake = FakeKalshi(wall_ms=wall_ms)
    fake.rate_limit_next_requests(3)
    metas, fetcher = await _run(fake, ["FED-23DEC-T3.00"], wait_s=30)
    assert [m.ticker for m in metas] == ["FED-23DEC-T3.00"]
    assert fetcher.statistics().rest_429s == 3


async def test_metadata_refreshes_after_ttl_and_skips_unknown(autojump_clock: Any) -> None:
    """A described market is fetched again after its TTL; an unknown ticker is counted, not hammered."""
    fake = FakeKalshi(wall_ms=wall_ms)
    metas, fetcher = await _run(fake, ["FED-23DEC-T3.00", "UNKNOWN-1"], ttl_s=100, wait_s=250)
    assert [m.ticker for m in metas] == ["FED-23DEC-T3.00"] * 3
    assert fetcher.statistics().unknown == 3


async def test_metadata_of_markets_no_longer_held_is_not_refreshed_or_kept(autojump_clock: Any) -> None:
    """Past its TTL a market the dashboard no longer holds is dropped instead of fetched again,
    and expired event and series descriptions leave the caches: the fetcher's memory and its
    requests follow the markets held, not every market seen since start."""
    fake = FakeKalshi(wall_ms=wall_ms)
    held = {"FED-23DEC-T3.00", "KXNFLGAME-25SEP25SEAARI-SEA"}
    metas: list[MarketMeta] = []
    send, receive = trio.open_memory_channel[str](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        fetcher: MetadataFetcher = await nursery.start(
            lambda task_status: serve_metadata(
                KalshiConfig(rest_url=fake.rest_url),
                receive,
                metas.append,
                wall_ms=wall_ms,
                ttl_s=100,
                still_wanted=held.__contains__,
                task_status=task_status,
            )
        )
        for ticker in held:
            send.send_nowait(ticker)
        await eventually(lambda: len(metas) == 2)
        held.discard("KXNFLGAME-25SEP25SEAARI-SEA")
        await trio.sleep(250)
        nursery.cancel_scope.cancel()
    assert sorted(m.ticker for m in metas) == ["FED-23DEC-T3.00"] * 3 + ["KXNFLGAME-25SEP25SEAARI-SEA"]
    assert list(fetcher._due) == ["FED-23DEC-T3.00"]
    assert set(fetcher._events) <= {"FED-23DEC"} and set(fetcher._series) <= {"FED"}


def test_build_meta_without_event_falls_back() -> None:
    """Without an event the market's own (deprecated) title is used and the series comes from the ticker."""
    meta = build_meta(
        {"ticker": "FED-23DEC-T3.00", "title": "Fed above 3%?", "close_time": "bad"}, None, None
    )
    assert meta == MarketMeta(ticker="FED-23DEC-T3.00", title="Fed above 3%?", series_ticker="FED")


def test_build_meta_keeps_open_interest_and_liquidity_exactly() -> None:
    """``open_interest_fp`` (or the legacy integer) and ``liquidity_dollars`` become exact units;
    a figure that is missing or not an exact decimal stays unknown rather than rounded."""
    market = {
        "ticker": "FED-23DEC-T3.00",
        "open_interest_fp": "12345.67",
        "liquidity_dollars": "1520.12345678",
    }
    meta = build_meta(market, None, None)
    assert (meta.open_interest, meta.liquidity) == (1_234_567, 152_012_345_678)
    assert build_meta({"ticker": "X-1", "open_interest": 42}, None, None).open_interest == 4_200
    odd = build_meta({"ticker": "X-1", "open_interest_fp": "1.001", "liquidity_dollars": 12.5}, None, None)
    assert (odd.open_interest, odd.liquidity) == (None, None)


def test_build_meta_leaves_figures_beyond_64_bits_unknown() -> None:
    """A figure no BIGINT column or stream integer can hold is unknown, and one with a huge
    exponent is refused before it is turned into an integer (which took seconds of CPU)."""
    huge = {"ticker": "X-1", "open_interest_fp": "1e100000", "liquidity_dollars": "1e100000"}
    meta = build_meta(huge, None, None)
    assert (meta.open_interest, meta.liquidity) == (None, None)
    beyond = {"ticker": "X-1", "open_interest": 2**62, "liquidity_dollars": "92233720368.54775808"}
    meta = build_meta(beyond, None, None)
    assert (meta.open_interest, meta.liquidity) == (None, None)
    largest = {"ticker": "X-1", "liquidity_dollars": "92233720368.54775807"}
    assert build_meta(largest, None, None).liquidity == 2**63 - 1


def test_token_bucket_spaces_requests() -> None:
    """The bucket lets a burst through and then spaces reservations at 1/rate, queueing in order."""
    bucket = TokenBucket(rate=10.0, burst=2.0)
    assert [bucket.reserve(0.0) for _ in range(4)] == [0.0, 0.0, 0.1, 0.2]
    assert bucket.reserve(1.0) == 0.0


def test_build_meta_keeps_the_parlay_collection() -> None:
    """A combination market's ``mve_collection_ticker`` is kept (it makes ``is_parlay`` true even
    when the ticker does not say so); a market without one has ""."""
    parlay = build_meta({"ticker": "X-1", "mve_collection_ticker": "KXMVECROSSCATEGORY"}, None, None)
    assert parlay.mve_collection_ticker == "KXMVECROSSCATEGORY"
    assert is_parlay(parlay.ticker, parlay)
    plain = build_meta({"ticker": "X-1"}, None, None)
    assert plain.mve_collection_ticker == "" and not is_parlay(plain.ticker, plain)

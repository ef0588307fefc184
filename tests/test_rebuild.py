"""A restart's bulk restore equals replaying the stored trades one by one: every read the
dashboard makes, and every event the same later inputs produce.

``replayed`` is the definition (add each stored trade in trade-time order, then advance to
now); ``Aggregator.restore`` from a ``StoredSummary`` must be indistinguishable from it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import hypothesis.strategies as st
import orjson
import pytest
import trio
from hypothesis import given, settings

# Fixtures of the store suite: each test taking db_url runs on SQLite and on PostgreSQL.
from test_store import FAST, db_url, load_all, postgres_url, running_store, wait_until  # noqa: F401

from flowboard.aggregate.aggregator import Aggregator, dedup_start_ms, retention_start_ms
from flowboard.aggregate.events import TradeAdded
from flowboard.config import make_config
from flowboard.ingest.kalshi_format import encode_envelope, encode_trade_msg
from flowboard.ingest.recording import encode_line
from flowboard.ingest.sources import RawMessage
from flowboard.model import DAY_MS, HOUR_MS, MINUTE_MS, MarketMeta, Side, Trade, wall_clock_ms
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.store import StoredSummary
from flowboard.store._summary import merge_recent, summarize_minutes
from flowboard.testing.wsclient import open_wire_client

#: 2024-03-10 00:05:00 UTC: just past a UTC midnight, so "today" is younger than the day view.
NOW = 1_710_029_100_000
TICKERS = ("KXA-1", "KXB-2", "KXC-3", "KXD-4")


def trade_time(trade: Trade) -> int:
    return trade.ts_ms


def flow(trade: Trade) -> int:
    return trade.count if trade.taker_side == "yes" else -trade.count


def replayed(agg: Aggregator, stored: Sequence[Trade], now_ms: int) -> Aggregator:
    """The slow definition of a rebuild: every stored trade since the retention start, in
    (ts_ms, arrival) order, at its own time (never later than now), then the clock to now.
    ``stored`` is in arrival order (the order the store was offered them), which a stable
    sort by time keeps for the trades of one millisecond."""
    since = retention_start_ms(now_ms, agg.window_ms)
    for trade in sorted(stored, key=trade_time):
        if trade.ts_ms >= since:
            agg.add_trade(trade, min(trade.ts_ms, now_ms))
    agg.advance(now_ms)
    return agg


def summary_of(
    stored: Sequence[Trade], since_ms: int, recent_since_ms: int, agg: Aggregator
) -> StoredSummary:
    """What the store's queries return, computed from the trade list itself."""
    kept = sorted((t for t in stored if t.ts_ms >= since_ms), key=trade_time)
    arrival = {t.trade_id: number for number, t in enumerate(stored, 1)}

    def rows(trades: Sequence[Trade]) -> list[tuple[Any, ...]]:
        return [(t.trade_id, *trade_fields(t), arrival[t.trade_id]) for t in trades]

    def minute_usd(minute_ms: int) -> int:
        return sum(t.usd for t in kept if minute_ms <= t.ts_ms < minute_ms + MINUTE_MS)

    summary_rows = [
        (t.ts_ms, t.trade_id, t.ticker, t.usd if t.count < 10**12 else None, t.count, flow(t)) for t in kept
    ]
    per_market = [[t for t in kept if t.ticker == ticker][-agg.history_len :] for ticker in TICKERS]
    recent = merge_recent(
        rows([t for t in kept if t.ts_ms >= recent_since_ms]),
        rows(kept[-agg.tape_size :]),
        *map(rows, per_market),
    )
    return StoredSummary(summarize_minutes([summary_rows], minute_usd, since_ms), recent)


def restored(agg: Aggregator, stored: Sequence[Trade], now_ms: int) -> Aggregator:
    """The fast rebuild, as ``pipeline._rebuild`` does it."""
    since = retention_start_ms(now_ms, agg.window_ms)
    summary = summary_of(stored, since, now_ms - agg.restore_horizon_ms + 1, agg)
    agg.restore(now_ms, summary.minutes, summary.recent)
    return agg


def reads(agg: Aggregator) -> dict[str, Any]:
    """Everything a viewer or the API can read from an aggregator."""
    markets = agg.market_ids()
    return {
        "now": agg.now_ms,
        "trades_total": agg.trades_total,
        "statistics": agg.statistics(),
        "markets": [
            (
                agg.ticker(m),
                agg.meta(m),
                agg.window(m),
                agg.sparkline(m),
                agg.last_trade(m),
                agg.market_trades(m, agg.market_tape_size),
            )
            for m in markets
        ],
        "market_ids": {agg.ticker(m): agg.market_id(agg.ticker(m)) for m in markets},
        "hot": agg.hot(),
        "top": agg.top_trades(),
        "tape": agg.recent_trades(agg.tape_size),
        "hour": agg.analytics("hour"),
        "day": agg.analytics("day"),
        "today": agg.today(),
        "today_flow": agg.today_flow(),
        "active": agg.active_markets(),
        # Alerts are not here: a restart takes them from the store, never raises them again.
        "flows": agg.flows(1000, include_parlays=True),
        "movers": [agg.movers(period, 1000, include_parlays=True) for period in ("10m", "1h")],
    }


def stored_trades(prefix: str, max_size: int = 60) -> st.SearchStrategy[list[Trade]]:
    """Unique ids, not in arrival order (so that ordering ties by id would show); times from two
    days ago to a minute ahead of now, bunched so that equal times, equal sizes, the window
    edge and the retention edge all come up."""
    times = st.one_of(
        st.integers(NOW - 2 * DAY_MS, NOW + MINUTE_MS),
        st.integers(NOW - 15 * MINUTE_MS, NOW),
        st.sampled_from(
            [
                NOW,
                NOW - 600_000,
                NOW - 599_999,
                retention_start_ms(NOW, 600_000),
                retention_start_ms(NOW, 600_000) - 1,
                NOW - NOW % DAY_MS,
                NOW - NOW % HOUR_MS - 1,
            ]
        ),
    )
    sides: st.SearchStrategy[Side] = st.sampled_from(("yes", "no"))
    trade = st.tuples(
        st.sampled_from(TICKERS),
        st.sampled_from((10_000, 500_000, 990_000, 123_400, 365_050)),  # $0.01 .. $0.99, $0.36505
        st.one_of(st.sampled_from((100, 200)), st.integers(1, 10**6), st.just(10**15)),
        sides,
        times,
    )
    return st.lists(trade, max_size=max_size).map(
        lambda rows: [Trade(f"{prefix}{n * 7919 % 1000:03d}", *row) for n, row in enumerate(rows)]
    )


sizes = st.fixed_dictionaries(
    {
        "window_ms": st.sampled_from((600_000, 60_000, 25 * HOUR_MS)),
        "sparkline_len": st.integers(1, 4),
        "top_size": st.integers(1, 4),
        "hot_size": st.integers(1, 3),
        "tape_size": st.integers(1, 6),
        "market_tape_size": st.integers(1, 5),
        "dedup_horizon_ms": st.sampled_from((600_000, 2 * MINUTE_MS, 30 * HOUR_MS)),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    stored=stored_trades("s"),
    later=stored_trades("l", max_size=15),
    sizes=sizes,
    metas=st.lists(st.sampled_from(("KXC-3", "KXZ-9")), unique=True),
    now_offset=st.integers(-2 * MINUTE_MS, 2 * MINUTE_MS),
)
def test_restore_equals_replay(
    stored: list[Trade], later: list[Trade], sizes: dict[str, int], metas: list[str], now_offset: int
) -> None:
    """Restoring the store's summary gives the reads of replaying every stored trade, and the
    two aggregators then answer later trades, duplicates and clock moves with equal events;
    every other later trade comes with the store's answer, as the pipeline gives it for
    trades older than the remembered ids, and a duplicate is never counted twice."""
    now = NOW + now_offset
    slow, fast = Aggregator(**sizes), Aggregator(**sizes)
    for agg in (slow, fast):
        for ticker in metas:
            agg.set_meta(MarketMeta(ticker, title=f"title of {ticker}"))
    replayed(slow, stored, now)
    restored(fast, stored, now)
    assert reads(fast) == reads(slow)

    # Later: new trades (some reusing a stored id), late ones, and the clock moving on by up to a day.
    in_store = {trade.trade_id: trade for trade in stored}
    step = DAY_MS // max(1, len(later))
    for number, trade in enumerate(later):
        at = now + number * step
        if number % 6 == 0 and stored:
            trade = stored[number % len(stored)]  # the feed sends a stored trade again
        elif number % 3 == 0:
            trade = Trade(stored[number % len(stored)].trade_id if stored else "dup", *trade_fields(trade))
        absent = number % 2 == 0 and trade.trade_id not in in_store
        events = fast.add_trade(trade, at, absent_from_store=absent)
        assert events == slow.add_trade(trade, at, absent_from_store=absent)
        if any(isinstance(event, TradeAdded) for event in events):
            assert in_store.get(trade.trade_id) != trade, "a duplicate was counted"
            in_store[trade.trade_id] = trade
        assert fast.advance(at + 30_000) == slow.advance(at + 30_000)
    assert reads(fast) == reads(slow)


def trade_fields(trade: Trade) -> tuple[str, int, int, Side, int]:
    return (trade.ticker, trade.yes_price, trade.count, trade.taker_side, trade.ts_ms)


def test_restore_needs_an_aggregator_without_trades() -> None:
    """Restoring on top of live trades would count them twice: refused."""
    agg = Aggregator()
    agg.add_trade(Trade("a", "KXA-1", 5000, 100, "yes", NOW), NOW)
    with pytest.raises(RuntimeError, match="without trades"):
        agg.restore(NOW, [], [])


# -- against the databases ---------------------------------------------------------------------


def random_stored(count: int, seed: int) -> list[Trade]:
    """Trades over the two days before NOW, bunched into few milliseconds so ties are common,
    some with counts so large that SQL cannot multiply them in 64 bits."""
    rng = random.Random(seed)
    times = [NOW - rng.choice((2 * DAY_MS, 3 * HOUR_MS, 15 * MINUTE_MS)) + rng.randrange(0, 20) * 9_000]
    for _ in range(count - 1):
        times.append(rng.choice((times[-1], rng.randrange(NOW - 2 * DAY_MS, NOW + 2_000))))
    return [
        Trade(
            trade_id=f"t{rng.getrandbits(40):010x}",
            ticker=rng.choice(TICKERS),
            yes_price=rng.randint(1, 9999),
            count=10**15 if rng.random() < 0.02 else rng.randint(1, 10**6),
            taker_side=rng.choice(("yes", "no")),
            ts_ms=ts_ms,
        )
        for ts_ms in times
    ]


@pytest.mark.parametrize("seed", [1, 2])
async def test_store_summary_restores_the_replayed_state(db_url: str, seed: int) -> None:  # noqa: F811
    """Both backends summarise stored trades exactly as the definition does (minute totals,
    exact even where SQL would overflow, ids for the de-duplication horizon only, markets in
    first-trade order, the recent trades), reading the day's rows a chunk at a time (chunks
    ending inside a minute), and restoring from them equals replaying every stored trade."""
    stored = random_stored(3_000, seed)
    sizes = {"tape_size": 40, "market_tape_size": 30}
    agg = Aggregator(**sizes)
    since = retention_start_ms(NOW, agg.window_ms)
    ids_since = dedup_start_ms(NOW, agg.dedup_horizon_ms)
    async with running_store(db_url, attrs.evolve(FAST, load_chunk_trades=7)) as store:
        store.offer(stored)
        await wait_until(lambda: store.statistics().written_total == len(stored))
        summary = await store.load_summary_since(
            since,
            ids_since_ms=ids_since,
            recent_since_ms=NOW - agg.restore_horizon_ms + 1,
            tape_size=agg.tape_size,
            per_market=agg.history_len,
        )
    expected = summary_of(stored, since, NOW - agg.restore_horizon_ms + 1, agg)
    expected_minutes = [
        minute if minute.start_ms >= ids_since else attrs.evolve(minute, trade_ids=())
        for minute in expected.minutes
    ]
    assert summary == StoredSummary(expected_minutes, expected.recent)
    assert any(minute.trade_ids for minute in summary.minutes)
    assert any(not minute.trade_ids for minute in summary.minutes)
    assert any(minute.usd > 2**63 for minute in summary.minutes)
    agg.restore(NOW, summary.minutes, summary.recent)
    assert reads(agg) == reads(replayed(Aggregator(**sizes), stored, NOW))


async def test_store_summary_of_an_empty_store(db_url: str) -> None:  # noqa: F811
    """No trades: nothing to summarise, and a restored aggregator is simply at now."""
    async with running_store(db_url) as store:
        summary = await store.load_summary_since(0, recent_since_ms=0, tape_size=10, per_market=10)
    assert summary == StoredSummary([], [])


# -- the server --------------------------------------------------------------------------------


async def test_server_restart_rebuilds_the_stored_state(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    """On each backend: the server stores every trade it accepts, and a server started on the
    same database shows the state of replaying them. Real clock: the writer's worker threads
    must finish their commits within the shutdown flush, which virtual time would cut short."""
    config = make_config(port=0, rate=300.0, seed=11, sim_history=60.0, sim_markets=40, db=db_url)
    async with trio.open_nursery() as nursery:
        first: Runtime = await nursery.start(partial(run_server, config))
        await trio.sleep(2)
        first.request_stop()
    async with running_store(db_url) as store:
        stored = await load_all(store)
        metas = await store.load_meta()
        # Described once, never traded since the retention horizon: not worth its memory.
        await store.save_meta([MarketMeta("KXGONE-24JAN01", title="Long closed")])
    assert len(stored) == first.agg.trades_total > 300 * 60
    assert first.store is not None and first.store.statistics().queued == 0

    empty = tmp_path / "empty.jsonl"
    empty.touch()
    # A source that adds nothing: what the second server shows is only what it rebuilt.
    quiet = make_config(port=0, source="replay", replay_file=str(empty), db=db_url)
    async with trio.open_nursery() as nursery:
        second: Runtime = await nursery.start(partial(run_server, quiet))
        rebuilt = reads(second.agg)
        nursery.cancel_scope.cancel()
    # The simulator's metadata is stored, and a rebuild sets that of the markets it restored.
    reference = Aggregator()
    replayed(reference, stored, rebuilt["now"])
    for meta in metas:
        if reference.market_id(meta.ticker) is not None:
            reference.set_meta(meta)
    assert rebuilt == reads(reference)
    assert rebuilt["trades_total"] == len(stored)
    assert second.agg.market_id("KXGONE-24JAN01") is None


async def test_a_restarted_simulator_keeps_its_markets_and_their_titles(db_url: str) -> None:  # noqa: F811
    """The default setup, stopped and started again on each backend: the simulator's metadata is
    stored like any source's, and the restarted simulator trades the same markets (tickers,
    titles, categories, close times) with new trade ids, so hot markets keep their titles."""
    config = make_config(port=0, rate=300.0, seed=11, sim_history=60.0, sim_markets=40, db=db_url)
    async with trio.open_nursery() as nursery:
        first: Runtime = await nursery.start(partial(run_server, config))
        await trio.sleep(1)
        first.request_stop()
    async with running_store(db_url) as store:
        stored_before = {meta.ticker: meta for meta in await store.load_meta()}
        trades_before = len(await load_all(store))
    assert len(stored_before) == 40

    async with trio.open_nursery() as nursery:
        second: Runtime = await nursery.start(partial(run_server, config))
        await trio.sleep(1)
        async with httpx.AsyncClient(base_url=second.url) as http:
            hot = (await http.get("/api/markets/hot")).json()["markets"]
        second.request_stop()
    async with running_store(db_url) as store:
        stored_after = {meta.ticker: meta for meta in await store.load_meta()}
        trades_after = len(await load_all(store))

    assert stored_after == stored_before
    assert hot
    for market in hot:
        meta = stored_before[market["ticker"]]
        assert market["title"] == meta.title != ""
        assert market["category"] == meta.category != ""
        assert market["close_time"] is not None and meta.close_ts_ms is not None
    # Every trade of the second run was new: none repeated a stored id.
    assert trades_after == trades_before + second.metrics.trades_ingested._value.get()
    assert second.metrics.duplicates._value.get() == 0


def recording_of(trades: Sequence[Trade]) -> bytes:
    """A recording (``flowboard record``'s JSON Lines) that delivers ``trades`` in this order."""
    return b"".join(
        encode_line(RawMessage(trade.ts_ms, encode_envelope(encode_trade_msg(trade), sid=1, seq=seq)))
        for seq, trade in enumerate(trades, 1)
    )


async def shown_orders(runtime: Runtime, ticker: str) -> dict[str, list[str]]:
    """The trade ids of ``ticker`` in the order each place shows them, newest first."""
    async with httpx.AsyncClient(base_url=runtime.url) as http:
        tape = (await http.get("/api/trades/recent", params={"limit": 100})).json()["trades"]
        market = (await http.get(f"/api/markets/{ticker}")).json()
        history = (await http.get(f"/api/markets/{ticker}/trades")).json()["trades"]
    market_id = runtime.agg.market_id(ticker)
    assert market_id is not None
    return {
        "tape": [t["trade_id"] for t in tape if t["ticker"] == ticker],
        "market": [t["trade_id"] for t in market["trades"]],
        "sparkline": [t.trade_id for t in reversed(runtime.agg.sparkline(market_id))],
        "stored history": [t["trade_id"] for t in history],
    }


async def test_trades_of_one_millisecond_show_in_one_order_everywhere_and_after_a_restart(
    db_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Trades of one market in one millisecond arrive with ids out of order: the tape, the
    market's state and sparkline, and its stored history all show them by time, then latest
    arrival first, and a server restarted on the store shows the same."""
    now = wall_clock_ms()
    ticker = "KXTIE-26JAN-A"
    arrivals = ["tie-c", "tie-a", "tie-e", "tie-b", "tie-d"]
    trades = [Trade("early", ticker, 4000, 100, "yes", now - 20_000)]
    trades += [Trade(trade_id, ticker, 4100, 100, "no", now - 10_000) for trade_id in arrivals]
    trades.append(Trade("late", ticker, 4200, 100, "yes", now - 5_000))
    recording = tmp_path / "ties.jsonl"
    recording.write_bytes(recording_of(trades))
    expected = ["late", *reversed(arrivals), "early"]

    config = make_config(port=0, source="replay", replay_file=str(recording), speed=0, db=db_url)
    async with trio.open_nursery() as nursery:
        first: Runtime = await nursery.start(partial(run_server, config))
        await wait_until(lambda: first.agg.trades_total == len(trades))
        await wait_until(lambda: first.store is not None and first.store.statistics().queued == 0)
        before = await shown_orders(first, ticker)
        first.request_stop()
    assert before == dict.fromkeys(before, expected)

    empty = tmp_path / "empty.jsonl"
    empty.touch()
    quiet = make_config(port=0, source="replay", replay_file=str(empty), db=db_url)
    async with trio.open_nursery() as nursery:
        second: Runtime = await nursery.start(partial(run_server, quiet))
        after = await shown_orders(second, ticker)
        second.request_stop()
    assert after == before


async def test_a_price_with_six_decimals_is_kept_end_to_end(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Kalshi's spec allows 6 decimals: a trade at $0.36505 (and one at $0.000001) is kept
    exactly in the JSON API, the v2 stream (whose hello declares the units), v1 and the store."""
    now = wall_clock_ms()
    five = Trade("five", "KXSIX-26JAN-A", 365_050, 347, "no", now - 2_000)
    six = Trade("six", "KXSIX-26JAN-A", 1, 100, "yes", now - 1_000)
    recording = tmp_path / "six.jsonl"
    recording.write_bytes(recording_of([five, six]))
    assert '\\"yes_price_dollars\\":\\"0.36505\\"' in recording.read_text()  # as Kalshi would write it

    config = make_config(port=0, source="replay", replay_file=str(recording), speed=0, db=db_url)
    async with trio.open_nursery() as nursery:
        server: Runtime = await nursery.start(partial(run_server, config))
        await wait_until(lambda: server.agg.trades_total == 2)
        async with httpx.AsyncClient(base_url=server.url) as http:
            shown = (await http.get("/api/trades/recent")).json()["trades"]
        ws_base = server.url.replace("http://", "ws://")
        v2_client = await open_wire_client(ws_base + "/ws?ch=trades")
        v2_frame = orjson.loads((await v2_client.receive()).text)
        await v2_client.aclose()
        v1_client = await open_wire_client(ws_base + "/ws/stream")
        v1_snapshot = orjson.loads((await v1_client.receive()).text)
        await v1_client.aclose()
        server.request_stop()
    async with running_store(db_url) as store:
        stored = await load_all(store)

    assert [(t["trade_id"], t["yes_price"], t["no_price"], t["usd_volume"]) for t in shown] == [
        ("six", "0.000001", "0.999999", "0.000001"),
        # 3.47 contracts x $0.63495 (the NO taker's price) = $2.2032765
        ("five", "0.36505", "0.63495", "2.2032765"),
    ]
    hello = next(event[1] for event in v2_frame[1:] if event[0] == "H")
    assert hello["units"] == {"price": 6, "count": 2, "usd": 8}
    tape = next(event[1:] for event in v2_frame[1:] if event[0] == "T")
    assert [(price, count) for _, price, count, _, _ in tape] == [(1, 100), (365_050, 347)]
    v1_trades = v1_snapshot["data"]["recent_trades"]
    assert [(t["yes_price"], t["yes_price_dollars"]) for t in v1_trades] == [
        (0.0001, 0.000001),
        (36.505, 0.36505),
    ]
    assert sorted(stored, key=trade_time) == [five, six]

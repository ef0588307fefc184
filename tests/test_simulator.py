"""The simulator: deterministic, realistic in the ways the dashboard shows, and in Kalshi's format."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from functools import partial

import orjson
import pytest
import trio

from flowboard.ingest.feed import FeedItem, Received
from flowboard.ingest.kalshi_format import encode_trade_msg, trade_from_msg
from flowboard.ingest.simulator import Simulator
from flowboard.ingest.sources import serve_simulator
from flowboard.model import COUNT_SCALE, ONE_DOLLAR, Trade, is_parlay, series_of

START_MS = 1_767_200_000_000  # 2025-12-31 16:53:20 UTC

# One pattern per family of tickers the simulator makes; Kalshi's documented examples must match them.
TICKER_SHAPES = {
    "crypto hourly": r"KX(BTC|ETH|SOL|XRP)D-\d{2}[A-Z]{3}\d{4}-T\d+\.\d{2}",
    "crypto 15 minutes": r"KX(BTC|ETH|SOL|XRP)15M-\d{2}[A-Z]{3}\d{6}-\d{2}",
    "sports game": r"KX(NFL|NBA|MLB|NHL|EPL)GAME-\d{2}[A-Z]{3}\d{2}[A-Z]{4,6}-[A-Z]{2,3}",
    "fed": r"(KX)?FED-\d{2}[A-Z]{3}-T\d\.\d{2}",
    "economics": r"KX(CPI|CPIYOY|U3|PAYROLLS)-\d{2}[A-Z]{3}-T\d+(\.\d)?",
    "weather": r"(KX)?HIGH[A-Z]+-\d{2}[A-Z]{3}\d{2}-(B\d+\.5|T\d+)",
    "politics": r"KX(PRESPARTY-\d{4}|SENATE-\d{2}|HOUSE-\d{2}|GOV[A-Z]{2}-\d{2})-[DR]",
    "financials": r"KX(INX|NASDAQ100)U-\d{2}[A-Z]{3}\d{2}H1600-T\d+\.99",
    "entertainment": r"KXRT-[A-Z0-9]+-\d{2}",
    "parlay": r"KXMVE(SPORTSMULTIGAMEEXTENDED|CROSSCATEGORY)-S\d{4}[0-9A-F]{11}-[0-9A-F]{11}",
}
KALSHI_EXAMPLES = (
    "KXBTCD-25DEC3117-T101999.99",
    "HIGHNY-22DEC23-B53.5",
    "KXBTC15M-26APR160100-00",
    "KXNFLGAME-25SEP25SEAARI-SEA",
    "FED-23DEC-T3.00",
)
CATEGORIES = {"Crypto", "Sports", "Economics", "Politics", "Weather", "Financials", "Entertainment"}
# Where Kalshi's flow concentrates: crypto hourly, sports games, the Fed.
DOMINANT_SERIES = re.compile(r"KX(BTC|ETH|SOL|XRP)(D|15M)|KX\w+GAME|(KX)?FED")


def run(sim: Simulator, n: int, now_ms: int = START_MS) -> list[tuple[int, Trade]]:
    """``n`` trades from ``sim``, each asked for at the time of the one before."""
    timed = []
    for _ in range(n):
        now_ms, trade = sim.next_trade(now_ms)
        timed.append((now_ms, trade))
    return timed


def test_same_seed_gives_same_markets_and_trades() -> None:
    """Two simulators with one seed agree on every market, trade, time and id; another seed differs."""
    first, second = Simulator(7, 10.0, start_ms=START_MS), Simulator(7, 10.0, start_ms=START_MS)
    assert first.markets == second.markets
    assert first.history(START_MS, 60) == second.history(START_MS, 60)
    assert run(first, 2_000) == run(second, 2_000)
    other = Simulator(8, 10.0, start_ms=START_MS)
    assert other.markets != first.markets


def test_a_new_trade_seed_keeps_the_markets_and_changes_the_trades() -> None:
    """A restarted simulator (same seed and anchor, new trade seed) trades the same markets,
    with new trade ids, and carries on from the prices it is given."""
    first = Simulator(7, 10.0, start_ms=START_MS)
    restarted = Simulator(7, 10.0, start_ms=START_MS, trade_seed=99)
    assert restarted.markets == first.markets
    first_ids = {trade.trade_id for _, trade in run(first, 500)}
    assert first_ids.isdisjoint(trade.trade_id for _, trade in run(restarted, 500))

    ticker = first.markets[0].ticker
    resumed = Simulator(7, 10.0, start_ms=START_MS, trade_seed=99)
    resumed.resume_prices({ticker: ONE_DOLLAR // 2})
    _, trade = next((at, t) for at, t in run(resumed, 5_000) if t.ticker == ticker)
    assert abs(trade.yes_price - ONE_DOLLAR // 2) <= ONE_DOLLAR // 10


def test_mean_rate_over_a_long_run() -> None:
    """Bursts included, 200,000 trades arrive at the configured mean rate to within 3%."""
    sim = Simulator(3, 50.0, start_ms=START_MS)
    end_ms, _ = run(sim, 200_000)[-1]
    measured = 200_000 / ((end_ms - START_MS) / 1000)
    assert measured == pytest.approx(50.0, rel=0.03)


def test_popularity_is_skewed_towards_crypto_sports_and_the_fed() -> None:
    """The ten busiest markets take most trades, and crypto, sports games and the Fed most of all."""
    trades = [trade for _, trade in run(Simulator(11, 10.0, start_ms=START_MS), 20_000)]
    per_market = Counter(trade.ticker for trade in trades)
    assert sum(n for _, n in per_market.most_common(10)) > 0.5 * len(trades)
    dominant = sum(n for ticker, n in per_market.items() if DOMINANT_SERIES.fullmatch(series_of(ticker)))
    assert dominant > 0.5 * len(trades)


def test_sub_cent_prices_and_fractional_counts_appear() -> None:
    """Some trades are priced at $0.001 ticks and some have fractional counts; prices stay in 1¢-99¢."""
    trades = [trade for _, trade in run(Simulator(11, 10.0, start_ms=START_MS), 20_000)]
    sub_cent = [trade for trade in trades if trade.yes_price % (ONE_DOLLAR // 100)]
    assert sub_cent
    assert all(trade.yes_price % (ONE_DOLLAR // 1000) == 0 for trade in sub_cent)
    assert any(trade.count % COUNT_SCALE for trade in trades)
    assert all(ONE_DOLLAR // 100 <= trade.yes_price <= ONE_DOLLAR * 99 // 100 for trade in trades)


def test_sizes_are_mostly_small_with_a_heavy_tail() -> None:
    """Most trades are 1-100 contracts, and thousands of contracts happen now and then."""
    contracts = [trade.count / COUNT_SCALE for _, trade in run(Simulator(5, 10.0, start_ms=START_MS), 50_000)]
    assert 1 <= statistics.median(contracts) <= 20
    assert sum(c <= 100 for c in contracts) > 0.9 * len(contracts)
    assert max(contracts) >= 1_000


def test_takers_follow_the_price_drift() -> None:
    """A trade that moved the YES price up was mostly a YES taker's, one that moved it down a NO taker's."""
    last_price: dict[str, int] = {}
    sides_when: dict[str, Counter[str]] = {"up": Counter(), "down": Counter()}
    for _, trade in run(Simulator(2, 10.0, start_ms=START_MS), 20_000):
        before = last_price.get(trade.ticker)
        if before is not None and trade.yes_price != before:
            sides_when["up" if trade.yes_price > before else "down"][trade.taker_side] += 1
        last_price[trade.ticker] = trade.yes_price
    up, down = sides_when["up"], sides_when["down"]
    assert up["yes"] / up.total() > 0.6
    assert down["no"] / down.total() > 0.6


def test_bursts_put_tens_to_hundreds_of_trades_in_one_market_second() -> None:
    """Now and then a market trades many times within one second, up to a couple of hundred."""
    per_market_second = Counter(
        (trade.ticker, at_ms // 1000) for at_ms, trade in run(Simulator(4, 10.0, start_ms=START_MS), 50_000)
    )
    busiest = [n for _, n in per_market_second.most_common(5)]
    assert all(50 <= n <= 250 for n in busiest)


def test_markets_have_real_ticker_shapes_and_metadata() -> None:
    """Every market has a Kalshi ticker shape, its event and series, a category, a title, a future close."""
    for example in KALSHI_EXAMPLES:
        assert any(re.fullmatch(shape, example) for shape in TICKER_SHAPES.values()), example
    markets = Simulator(1, 10.0, start_ms=START_MS).markets
    assert len(markets) == 300
    assert len({market.ticker for market in markets}) == 300
    families: Counter[str] = Counter()
    for market in markets:
        family = next(
            (name for name, shape in TICKER_SHAPES.items() if re.fullmatch(shape, market.ticker)), None
        )
        assert family is not None, market.ticker
        families[family] += 1
        assert market.ticker.startswith(market.event_ticker + "-")
        assert market.series_ticker == series_of(market.ticker)
        assert market.event_ticker.startswith(market.series_ticker + "-")
        assert market.category in CATEGORIES
        assert market.title.endswith("?") or is_parlay(market.ticker, market)
        assert market.close_ts_ms is not None
        assert market.close_ts_ms > START_MS
    assert set(families) == set(TICKER_SHAPES)
    assert {market.category for market in markets} == CATEGORIES


def test_some_markets_are_parlays_whose_titles_list_their_legs() -> None:
    """About 5% of the markets are combination markets: a ``KXMVE`` ticker, the collection as
    series and ``mve_collection_ticker``, and a title listing 2-4 other markets' outcomes the way
    Kalshi does (``"yes Seattle at Arizona: Seattle wins,no ..."``); some of them trade."""
    sim = Simulator(1, 10.0, start_ms=START_MS)
    markets = sim.markets
    parlays = [market for market in markets if is_parlay(market.ticker, market)]
    assert len(parlays) == 15
    questions = {market.title.rstrip("?") for market in markets if market not in parlays}
    for parlay in parlays:
        assert parlay.mve_collection_ticker == parlay.series_ticker
        assert parlay.ticker.startswith(parlay.mve_collection_ticker + "-S")
        legs = re.split(r",(?=(?:yes|no) )", parlay.title)
        assert 2 <= len(legs) <= 4
        for leg in legs:
            side, _, question = leg.partition(" ")
            assert side in ("yes", "no") and question in questions
    traded = {trade.ticker for _, trade in run(sim, 20_000)}
    assert traded & {parlay.ticker for parlay in parlays}


def test_titles_read_like_kalshi() -> None:
    """Titles spell out the question, e.g. "Bitcoin above $101,999.99 on Dec 31 at 5pm?"."""
    titles = {market.ticker: market.title for market in Simulator(1, 10.0, start_ms=START_MS).markets}
    bitcoin = [title for ticker, title in titles.items() if ticker.startswith("KXBTCD-")]
    assert bitcoin
    assert all(
        re.fullmatch(r"Bitcoin above \$\d{2,3},\d{3}\.99 on [A-Z][a-z]{2} \d{1,2} at \d{1,2}[ap]m\?", t)
        for t in bitcoin
    )


def test_n_markets_is_honoured() -> None:
    """A small simulator makes exactly the markets asked for and trades only in them."""
    sim = Simulator(9, 10.0, n_markets=5, start_ms=START_MS)
    tickers = {market.ticker for market in sim.markets}
    assert len(tickers) == 5
    assert {trade.ticker for _, trade in run(sim, 500)} <= tickers


@pytest.mark.parametrize(("rate", "n_markets"), [(0.0, 300), (-1.0, 300), (float("nan"), 300), (10.0, 0)])
def test_nonsense_arguments_are_refused(rate: float, n_markets: int) -> None:
    """A rate that is not positive or a market count out of range raises ValueError at construction."""
    with pytest.raises(ValueError, match="expected"):
        Simulator(1, rate, n_markets, start_ms=START_MS)


def test_every_trade_parses_back_from_kalshi_format() -> None:
    """Each simulated trade, sent as Kalshi's JSON, parses back to itself; times follow the clock."""
    now_ms = START_MS
    sim = Simulator(6, 100.0, start_ms=START_MS)
    for step in range(5_000):
        # Now and then the caller comes back late: the next trade is never before it asked.
        asked_ms = now_ms + (10_000 if step % 1_000 == 999 else 0)
        now_ms, trade = sim.next_trade(asked_ms)
        assert now_ms >= asked_ms
        assert trade.ts_ms == now_ms
        assert trade_from_msg(orjson.loads(orjson.dumps(encode_trade_msg(trade)))) == trade


def test_history_backdates_a_warm_start() -> None:
    """``history`` gives the trades of the last ``seconds`` in time order, at the configured rate."""
    sim = Simulator(12, 20.0, start_ms=START_MS)
    trades = sim.history(START_MS, 600)
    times = [trade.ts_ms for trade in trades]
    assert times == sorted(times)
    assert times[0] >= START_MS - 600_000 and times[-1] < START_MS
    assert len(trades) == pytest.approx(20 * 600, rel=0.15)
    assert len({trade.trade_id for trade in trades}) == len(trades)
    next_ms, _ = sim.next_trade(START_MS)
    assert next_ms >= START_MS


async def test_serve_simulator_emits_trades_in_real_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The task sends each trade, parsed (no text: nothing to parse back), at its time."""

    # trio's clock is float seconds; rounding maps it back to the exact ms the task slept until.
    def wall_ms() -> int:
        return START_MS + round(trio.current_time() * 1000)

    twin = Simulator(5, 20.0, start_ms=START_MS)
    send, receive = trio.open_memory_channel[FeedItem](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve_simulator, Simulator(5, 20.0, start_ms=START_MS), send, wall_ms=wall_ms)
        )
        received = [await receive.receive() for _ in range(300)]
        nursery.cancel_scope.cancel()

    now_ms = START_MS
    for item in received:
        now_ms, expected = twin.next_trade(now_ms)
        assert isinstance(item, Received)
        assert (item.trade, item.raw) == (expected, None)
        assert item.received_ms == expected.ts_ms
    assert wall_ms() == received[-1].received_ms


async def _count_messages(
    sim: Simulator, *, seconds: float, burst: tuple[float, float] | None = None
) -> list[Received]:
    """Run serve_simulator for ``seconds`` of virtual time and collect what it sends."""
    send, receive = trio.open_memory_channel[FeedItem](100_000)
    received: list[Received] = []

    def wall_ms() -> int:
        return 1_795_800_000_000 + round(trio.current_time() * 1000)

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_simulator, sim, send, wall_ms=wall_ms, burst=burst))
        with trio.move_on_after(seconds):
            async for message in receive:
                assert isinstance(message, Received)
                received.append(message)
        nursery.cancel_scope.cancel()
    return received


async def test_burst_plays_its_rate_then_the_base_rate(autojump_clock: trio.testing.MockClock) -> None:
    """--sim-burst 500:10 gives about 5,000 trades in the first 10 s, then about 10/s."""
    sim = Simulator(seed=5, rate=10, start_ms=1_795_800_000_000)
    messages = await _count_messages(sim, seconds=30, burst=(500, 10))
    start = messages[0].received_ms
    in_burst = sum(1 for m in messages if m.received_ms - start < 10_000)
    after = len(messages) - in_burst
    assert 4_000 < in_burst < 6_000
    assert 100 < after < 320


async def test_a_late_source_sends_what_came_due_instead_of_thinning_the_feed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the source cannot run for a while, the trades due meanwhile still all arrive."""
    rate = 50.0
    sim = Simulator(seed=6, rate=rate, start_ms=1_795_800_000_000)
    send, receive = trio.open_memory_channel[FeedItem](0)
    received = 0

    def wall_ms() -> int:
        return 1_795_800_000_000 + round(trio.current_time() * 1000)

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_simulator, sim, send, wall_ms=wall_ms))
        await trio.sleep(20)  # nobody reads: the source is blocked on the unbuffered channel
        with trio.move_on_after(20):
            async for _ in receive:
                received += 1
        nursery.cancel_scope.cancel()
    # 40 s of feed at 50/s, although the reader only ran for the last 20 s.
    assert received > 0.8 * 40 * rate

"""A seeded stand-in for Kalshi's trade feed, so Flowboard runs with no account and no network.

Pure and deterministic: the simulator owns a ``random.Random(seed)`` and takes the time as
an argument, so the same seed and the same calls give the same markets and the same trades.
It aims to look like the real feed where the dashboard would notice:

- real ticker shapes and human titles across Kalshi's categories;
- popularity that is Zipf-skewed, with crypto hourly, sports games and the Fed on top;
- prices that wander in a bounded walk, some markets on a $0.001 tick, some with
  fractional counts, heavy-tailed sizes, takers that follow the recent drift;
- a few combination ("parlay") markets, as Kalshi's multivariate events make them: ``KXMVE...``
  tickers, titles that list the legs, a collection ticker;
- Poisson arrivals at the configured mean rate, part of which comes as bursts of tens
  to a couple of hundred trades in one market within about a second.

The trio task that turns this into a feed is ``flowboard.ingest.sources.serve_simulator``.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import attrs

from flowboard.model import COUNT_SCALE, ONE_DOLLAR, USD_SCALE, MarketMeta, Side, Trade

#: The most markets a simulator makes: the families have a finite (if large) number of distinct
#: events, and a dashboard of more markets than this shows nothing the simulator could add.
MAX_MARKETS = 2_000

# Share of all trades that arrive in bursts; the rest is a plain Poisson stream.
BURST_SHARE = 0.15
BURST_TRADES = (20, 200)  # trades per burst, uniform
MEAN_BURST_TRADES = sum(BURST_TRADES) / 2
BURST_SECONDS = (0.3, 1.0)  # how long a burst lasts, uniform

# Market i by popularity rank gets weight 1/(i+1)**ZIPF_EXPONENT: with 300 markets the top
# ten take about 60% of trades, as on Kalshi where a few markets take most of the flow.
ZIPF_EXPONENT = 1.2
# Spread of a market's hotness within its family, so that ranks mix families.
HOTNESS_SIGMA = 1.0

# Open interest and resting liquidity per market: log-normal, medians 20,000 contracts and $15,000.
OPEN_INTEREST_MEDIAN_LOG = math.log(20_000)
LIQUIDITY_MEDIAN_CENTS_LOG = math.log(1_500_000)

# Markets that are combinations of others' outcomes; drawn from a generator of their own (seeded
# from the seed) so that the other markets, their popularity and every trade stay as they were.
PARLAY_SHARE = 0.05
PARLAY_LEGS = (2, 4)  # legs per combination, uniform
# Kalshi's multivariate-event collections: games of one sport, or any markets at all.
PARLAY_COLLECTIONS = {"Sports": "KXMVESPORTSMULTIGAMEEXTENDED", "": "KXMVECROSSCATEGORY"}

SUB_CENT_SHARE = 0.10  # markets that tick at $0.001
FRACTIONAL_SHARE = 0.15  # markets that trade fractional contracts

# Kalshi prices run from 1¢ to 99¢; both bounds are whole ticks of either tick size.
PRICE_FLOOR = ONE_DOLLAR // 100
PRICE_CEILING = ONE_DOLLAR - PRICE_FLOOR
CENT_TICK = ONE_DOLLAR // 100
SUB_CENT_TICK = ONE_DOLLAR // 1000

# The price walk: each trade moves the price by a normal number of ticks whose mean follows
# the market's recent drift (momentum), and the drift is an exponential average of moves.
MOMENTUM = 0.5
DRIFT_MEMORY = 0.7
# How strongly takers follow the drift: P(yes) = 0.5 + SIDE_BIAS * tanh(drift).
SIDE_BIAS = 0.4
# A burst is a sweep: one direction, so its trades push the price and mostly share a side.
BURST_DRIFT = 1.5

# Sizes: a Pareto tail over a few typical order sizes gives mostly 1-100 contracts and,
# now and then, thousands.
SIZE_TAIL = 1.3
SIZE_SCALES = (1, 1, 2, 5, 10)
MAX_CONTRACTS = 50_000

# Kalshi names intraday events in New York time. A fixed offset keeps the simulator free of
# time-zone data; being an hour off during daylight saving does not matter for a simulation.
_NEW_YORK = timezone(timedelta(hours=-5))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@attrs.define
class _MarketState:
    """What the simulator remembers about a market between its trades."""

    meta: MarketMeta
    tick: int  # price units per tick: CENT_TICK or SUB_CENT_TICK
    fractional: bool  # whether its counts have hundredths
    price: int  # last YES price, price units
    drift: float  # recent moves in ticks, exponentially averaged


@attrs.define
class _Burst:
    """A run of trades in one market that is still under way."""

    market: int  # index into the simulator's markets
    left: int  # trades still to come
    rate: float  # trades per second while it lasts
    direction: int  # +1 pushes the YES price up, -1 down


class Simulator:
    """Seeded trades for ``n_markets`` markets at a mean of ``rate`` trades per second.

    ``start_ms`` anchors the markets: event dates and close times lie after it. ``seed`` and
    ``start_ms`` alone decide the markets (tickers, titles, close times, popularity);
    ``trade_seed``, when given, starts the trade sequence afresh, so that a restarted
    simulator trades the same markets with new trade ids.
    """

    def __init__(
        self, seed: int, rate: float, n_markets: int = 300, *, start_ms: int, trade_seed: int | None = None
    ) -> None:
        if not 1 <= n_markets <= MAX_MARKETS:
            raise ValueError(f"n_markets: expected 1 to {MAX_MARKETS}, got {n_markets!r}")
        self._rng = random.Random(seed)
        self.set_rate(rate)
        # Simulated time of the last arrival, in ms; a float so that waits shorter than
        # a millisecond add up instead of rounding away (which would skew the rate).
        self._clock_ms = -math.inf
        self._bursts: list[_Burst] = []
        metas, hotness = _make_markets(self._rng, n_markets, start_ms)
        metas = _with_parlays(random.Random(f"parlays-{seed}"), metas, start_ms)
        metas = [_with_book_figures(meta) for meta in metas]
        self._cum_weights = _popularity(self._rng, hotness)
        self._states = _initial_states(self._rng, metas)
        if trade_seed is not None:
            self._rng = random.Random(trade_seed)

    def set_rate(self, rate: float) -> None:
        """Change the mean trades per second from the next trade on (bursts already running go on)."""
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate: expected a positive number of trades per second, got {rate!r}")
        self.rate = rate
        self._background_rate = rate * (1 - BURST_SHARE)
        self._burst_start_rate = rate * BURST_SHARE / MEAN_BURST_TRADES

    @property
    def markets(self) -> list[MarketMeta]:
        """Every market the simulator trades, with the metadata a fetcher would find."""
        return [state.meta for state in self._states]

    def resume_prices(self, last_prices: Mapping[str, int]) -> None:
        """Carry on from these last YES prices (by ticker) instead of the seeded ones: a
        restarted simulator's prices go on from where its stored trades left them."""
        for state in self._states:
            price = last_prices.get(state.meta.ticker)
            if price is not None and PRICE_FLOOR <= price <= PRICE_CEILING:
                state.price = price - (price - PRICE_FLOOR) % state.tick

    def next_trade(self, now_ms: int) -> tuple[int, Trade]:
        """The time (>= ``now_ms``) of the next trade, and the trade.

        Time the caller skipped (``now_ms`` past the last trade) is treated as quiet: the
        wait restarts at ``now_ms``, which leaves a Poisson stream's rate unchanged.
        """
        self._clock_ms = max(self._clock_ms, now_ms) + self._wait_ms()
        at_ms = math.floor(self._clock_ms)
        return at_ms, self._trade_at(at_ms)

    def history(self, now_ms: int, seconds: float) -> list[Trade]:
        """The trades of the ``seconds`` before ``now_ms``, oldest first, for a warm start.

        Call it before the first :meth:`next_trade`; the simulation then carries on from
        ``now_ms`` with the prices and bursts the history left.
        """
        self._clock_ms = max(self._clock_ms, now_ms - seconds * 1000)
        trades = []
        # A wait that overshoots now_ms is dropped: the next one restarts at now_ms, and
        # Poisson waits are memoryless, so the stream is the same as if it had run on.
        while (at_ms := self._clock_ms + self._wait_ms()) < now_ms:
            self._clock_ms = at_ms
            trades.append(self._trade_at(math.floor(at_ms)))
        self._clock_ms = max(self._clock_ms, now_ms)
        return trades

    def _wait_ms(self) -> float:
        return self._rng.expovariate(self._total_rate() / 1000)

    def _total_rate(self) -> float:
        return self._background_rate + self._burst_start_rate + sum(burst.rate for burst in self._bursts)

    def _trade_at(self, at_ms: int) -> Trade:
        """The trade at ``at_ms``: from a running burst, a new burst, or the background stream,
        each in proportion to its rate."""
        pick = self._rng.random() * self._total_rate()
        for burst in self._bursts:
            if pick < burst.rate:
                return self._burst_trade(burst, at_ms)
            pick -= burst.rate
        if pick < self._burst_start_rate:
            low, high = BURST_TRADES
            size = self._rng.randint(low, high)
            burst = _Burst(
                market=self._pick_market(),
                left=size,
                rate=size / self._rng.uniform(*BURST_SECONDS),
                direction=self._rng.choice((1, -1)),
            )
            self._bursts.append(burst)
            return self._burst_trade(burst, at_ms)
        return self._trade_in(self._states[self._pick_market()], at_ms)

    def _burst_trade(self, burst: _Burst, at_ms: int) -> Trade:
        burst.left -= 1
        if not burst.left:
            self._bursts.remove(burst)
        state = self._states[burst.market]
        state.drift = burst.direction * BURST_DRIFT
        return self._trade_in(state, at_ms)

    def _pick_market(self) -> int:
        return self._rng.choices(range(len(self._states)), cum_weights=self._cum_weights)[0]

    def _trade_in(self, state: _MarketState, at_ms: int) -> Trade:
        rng = self._rng
        move = round(rng.gauss(MOMENTUM * state.drift, 1.0))
        state.drift = DRIFT_MEMORY * state.drift + (1 - DRIFT_MEMORY) * move
        price = state.price + move * state.tick
        # Reflect off the bounds, and turn the drift around with the price.
        if price < PRICE_FLOOR:
            price = min(PRICE_CEILING, 2 * PRICE_FLOOR - price)
            state.drift = -state.drift
        elif price > PRICE_CEILING:
            price = max(PRICE_FLOOR, 2 * PRICE_CEILING - price)
            state.drift = -state.drift
        state.price = price
        # Rising prices mean YES buyers are lifting offers, so the drift sets the taker side.
        side: Side = "yes" if rng.random() < 0.5 + SIDE_BIAS * math.tanh(state.drift) else "no"
        contracts = min(MAX_CONTRACTS, rng.choice(SIZE_SCALES) * rng.paretovariate(SIZE_TAIL))
        count = max(1, round(contracts * COUNT_SCALE)) if state.fractional else int(contracts) * COUNT_SCALE
        return Trade(
            trade_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            ticker=state.meta.ticker,
            yes_price=price,
            count=count,
            taker_side=side,
            ts_ms=at_ms,
        )


def _with_book_figures(meta: MarketMeta) -> MarketMeta:
    """``meta`` with an open interest and a liquidity such as Kalshi's market objects carry,
    drawn from the ticker alone so that adding them leaves every other seeded draw as it was."""
    rng = random.Random(meta.ticker)
    open_contracts = round(rng.lognormvariate(OPEN_INTEREST_MEDIAN_LOG, 1.5))
    liquidity_cents = round(rng.lognormvariate(LIQUIDITY_MEDIAN_CENTS_LOG, 1.2))
    return attrs.evolve(
        meta, open_interest=open_contracts * COUNT_SCALE, liquidity=liquidity_cents * (USD_SCALE // 100)
    )


def _with_parlays(rng: random.Random, metas: list[MarketMeta], start_ms: int) -> list[MarketMeta]:
    """``metas`` with ``PARLAY_SHARE`` of them replaced by combinations of the others' outcomes,
    titled as Kalshi titles them (``"yes Seattle wins,no Bitcoin above $101,249.99"``)."""
    count = round(PARLAY_SHARE * len(metas))
    if count == 0 or len(metas) - count < PARLAY_LEGS[1]:
        return metas
    replaced = set(rng.sample(range(len(metas)), count))
    legs_from = [meta for i, meta in enumerate(metas) if i not in replaced]
    year = (_EPOCH + timedelta(milliseconds=start_ms)).year
    result = list(metas)
    for i in sorted(replaced):
        legs = rng.sample(legs_from, rng.randint(*PARLAY_LEGS))
        categories = {leg.category for leg in legs}
        category = categories.pop() if len(categories) == 1 else ""
        collection = PARLAY_COLLECTIONS.get(category, PARLAY_COLLECTIONS[""])
        event = f"{collection}-S{year}{rng.getrandbits(44):011X}"
        result[i] = MarketMeta(
            ticker=f"{event}-{rng.getrandbits(44):011X}",
            title=",".join(f"{rng.choice(('yes', 'no'))} {leg.title.rstrip('?')}" for leg in legs),
            category=category or legs[0].category,
            close_ts_ms=min(leg.close_ts_ms or 0 for leg in legs) or None,
            event_ticker=event,
            series_ticker=collection,
            mve_collection_ticker=collection,
        )
    return result


def _initial_states(rng: random.Random, metas: Sequence[MarketMeta]) -> list[_MarketState]:
    indices = range(len(metas))
    sub_cent = set(rng.sample(indices, round(SUB_CENT_SHARE * len(metas))))
    fractional = set(rng.sample(indices, round(FRACTIONAL_SHARE * len(metas))))
    states = []
    for i, meta in enumerate(metas):
        tick = SUB_CENT_TICK if i in sub_cent else CENT_TICK
        states.append(
            _MarketState(
                meta=meta,
                tick=tick,
                fractional=i in fractional,
                price=rng.randrange(PRICE_FLOOR, PRICE_CEILING + 1, tick),
                drift=0.0,
            )
        )
    return states


def _popularity(rng: random.Random, hotness: Sequence[float]) -> list[float]:
    """Cumulative Zipf weights in market order, ranked by each market's hotness with noise."""
    scores = [hot * rng.lognormvariate(0, HOTNESS_SIGMA) for hot in hotness]
    ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    weights = [0.0] * len(scores)
    for rank, i in enumerate(ranked):
        weights[i] = 1 / (rank + 1) ** ZIPF_EXPONENT
    cumulative = []
    total = 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    return cumulative


# ----------------------------------------------------------------------------------------
# Markets. Each family makes the markets of one random event from the start time on.

_EventMaker = Callable[[random.Random, datetime], list[MarketMeta]]


def _make_markets(rng: random.Random, n_markets: int, start_ms: int) -> tuple[list[MarketMeta], list[float]]:
    """``n_markets`` distinct markets, and the hotness of each one's family."""
    start = _EPOCH + timedelta(milliseconds=start_ms)
    families = range(len(_FAMILIES))
    shares = [share for _, share, _ in _FAMILIES]
    metas: list[MarketMeta] = []
    hotness: list[float] = []
    seen: set[str] = set()
    while len(metas) < n_markets:
        maker, _, hot = _FAMILIES[rng.choices(families, weights=shares)[0]]
        for meta in maker(rng, start):
            if meta.ticker not in seen and len(metas) < n_markets:
                seen.add(meta.ticker)
                metas.append(meta)
                hotness.append(hot)
    return metas, hotness


_CRYPTO = (
    # (symbol, name, typical spot, strike step)
    ("BTC", "Bitcoin", 100_000, 250),
    ("ETH", "Ethereum", 3_500, 20),
    ("SOL", "Solana", 180, 2),
    ("XRP", "XRP", 3, 0.02),
)


def _crypto_hourly(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``KXBTCD-25DEC3117-T101999.99``: above a strike at an hour in New York time."""
    symbol, name, spot, step = rng.choice(_CRYPTO)
    hour = _floor_hour(start.astimezone(_NEW_YORK)) + timedelta(hours=rng.randint(1, 48))
    series = f"KX{symbol}D"
    event = f"{series}-{_day_code(hour)}{hour.hour:02d}"
    center = round(spot * rng.lognormvariate(0, 0.03) / step)
    markets = []
    for k in range(-rng.randint(2, 4), rng.randint(3, 5)):
        strike = (Decimal(center + k) * Decimal(str(step))).quantize(Decimal("0.01")) - Decimal("0.01")
        markets.append(
            MarketMeta(
                ticker=f"{event}-T{strike}",
                title=f"{name} above ${strike:,} on {_day_title(hour)} at {_hour_title(hour)}?",
                category="Crypto",
                close_ts_ms=_ms(hour),
                event_ticker=event,
                series_ticker=series,
            )
        )
    return markets


def _crypto_15m(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``KXBTC15M-26APR160100-00``: up or down over the 15 minutes to a quarter hour."""
    symbol, name, _, _ = rng.choice(_CRYPTO)
    local = start.astimezone(_NEW_YORK)
    quarter = local.replace(minute=local.minute - local.minute % 15, second=0, microsecond=0)
    close = quarter + timedelta(minutes=15 * rng.randint(1, 16))
    series = f"KX{symbol}15M"
    event = f"{series}-{_day_code(close)}{close.hour:02d}{close.minute:02d}"
    return [
        MarketMeta(
            ticker=f"{event}-{close.minute:02d}",
            title=f"{name} price up in the 15 minutes to {_hour_title(close)}?",
            category="Crypto",
            close_ts_ms=_ms(close),
            event_ticker=event,
            series_ticker=series,
        )
    ]


_LEAGUES = {
    "NFL": (
        ("SEA", "Seattle"), ("ARI", "Arizona"), ("KC", "Kansas City"), ("BUF", "Buffalo"),
        ("PHI", "Philadelphia"), ("DAL", "Dallas"), ("SF", "San Francisco"), ("GB", "Green Bay"),
        ("DET", "Detroit"), ("BAL", "Baltimore"), ("MIA", "Miami"), ("NYG", "New York G"),
    ),
    "NBA": (
        ("LAL", "Los Angeles L"), ("BOS", "Boston"), ("GSW", "Golden State"), ("DEN", "Denver"),
        ("MIL", "Milwaukee"), ("NYK", "New York"), ("PHX", "Phoenix"), ("OKC", "Oklahoma City"),
    ),
    "MLB": (
        ("NYY", "New York Y"), ("LAD", "Los Angeles D"), ("BOS", "Boston"), ("CHC", "Chicago C"),
        ("HOU", "Houston"), ("ATL", "Atlanta"), ("SD", "San Diego"), ("PHI", "Philadelphia"),
    ),
    "NHL": (
        ("TOR", "Toronto"), ("MTL", "Montreal"), ("BOS", "Boston"), ("NYR", "New York R"),
        ("EDM", "Edmonton"), ("VGK", "Vegas"), ("FLA", "Florida"), ("COL", "Colorado"),
    ),
    "EPL": (
        ("ARS", "Arsenal"), ("LIV", "Liverpool"), ("MCI", "Manchester City"), ("CHE", "Chelsea"),
        ("NEW", "Newcastle"), ("TOT", "Tottenham"), ("MUN", "Manchester United"), ("AVL", "Aston Villa"),
    ),
}  # fmt: skip


def _sports_game(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``KXNFLGAME-25SEP25SEAARI-SEA``: one market per team (and a tie, where there can be one)."""
    league = rng.choice(sorted(_LEAGUES))
    (away, away_name), (home, home_name) = rng.sample(_LEAGUES[league], 2)
    day = _floor_day(start.astimezone(_NEW_YORK)) + timedelta(days=rng.randint(1, 6))
    kickoff = day + timedelta(hours=rng.randint(12, 21))
    series = f"KX{league}GAME"
    event = f"{series}-{_day_code(kickoff)}{away}{home}"
    game = f"{away_name} vs {home_name}" if league == "EPL" else f"{away_name} at {home_name}"
    outcomes = [(away, f"{away_name} wins?"), (home, f"{home_name} wins?")]
    if league == "EPL":
        outcomes.append(("TIE", "Tie?"))
    return [
        MarketMeta(
            ticker=f"{event}-{code}",
            title=f"{game}: {question}",
            category="Sports",
            close_ts_ms=_ms(kickoff + timedelta(hours=4)),
            event_ticker=event,
            series_ticker=series,
        )
        for code, question in outcomes
    ]


_FOMC_MONTHS = (1, 3, 5, 6, 7, 9, 10, 12)


def _fed(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``KXFED-26MAR-T4.25`` (as ``FED-23DEC-T3.00``): the upper bound after an FOMC meeting."""
    ahead = rng.randint(1, 10)
    year, month = _months_ahead(start, ahead)
    while month not in _FOMC_MONTHS:
        ahead += 1
        year, month = _months_ahead(start, ahead)
    # The statement comes at 2pm New York time, around the middle of the month.
    decision = datetime(year, month, 18, 19, tzinfo=UTC)
    series = "KXFED"
    event = f"{series}-{year % 100:02d}{_MONTHS[month - 1]}"
    lowest = rng.randint(10, 16)  # in quarter points: 2.50% .. 4.00%
    meeting = f"{_MONTHS[month - 1].title()} {year}"
    markets = []
    for quarters in range(lowest, lowest + rng.randint(4, 7)):
        rate = f"{quarters / 4:.2f}"
        markets.append(
            MarketMeta(
                ticker=f"{event}-T{rate}",
                title=f"Fed funds upper bound above {rate}% after the {meeting} meeting?",
                category="Economics",
                close_ts_ms=_ms(decision),
                event_ticker=event,
                series_ticker=series,
            )
        )
    return markets


_INDICATORS = (
    # (series, question with {value} and {period}, strikes)
    ("KXCPI", "CPI up more than {value}% in {period}?", ("0.1", "0.2", "0.3", "0.4", "0.5")),
    ("KXCPIYOY", "Inflation above {value}% in {period}?", ("2.5", "2.6", "2.7", "2.8", "2.9", "3.0")),
    ("KXU3", "Unemployment above {value}% in {period}?", ("4.0", "4.1", "4.2", "4.3", "4.4", "4.5")),
    ("KXPAYROLLS", "Jobs added above {value} in {period}?", ("50000", "100000", "150000", "200000")),
)


def _economics(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``KXCPI-26MAR-T0.3``: a monthly release above a threshold."""
    series, question, strikes = rng.choice(_INDICATORS)
    ahead = rng.randint(0, 2)
    year, month = _months_ahead(start, ahead)
    release_year, release_month = _months_ahead(start, ahead + 1)
    event = f"{series}-{year % 100:02d}{_MONTHS[month - 1]}"
    period = f"{_MONTHS[month - 1].title()} {year}"
    return [
        MarketMeta(
            ticker=f"{event}-T{strike}",
            title=question.format(value=f"{Decimal(strike):,}", period=period),
            category="Economics",
            close_ts_ms=_ms(datetime(release_year, release_month, 12, 12, 30, tzinfo=UTC)),
            event_ticker=event,
            series_ticker=series,
        )
        for strike in strikes
    ]


_CITIES = (
    ("NY", "NYC"), ("CHI", "Chicago"), ("MIA", "Miami"), ("AUS", "Austin"),
    ("DEN", "Denver"), ("LAX", "Los Angeles"), ("PHIL", "Philadelphia"),
)  # fmt: skip


def _weather(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``HIGHNY-22DEC23-B53.5``: the day's high in two-degree brackets, with an open end each side."""
    code, city = rng.choice(_CITIES)
    day = _floor_day(start.astimezone(_NEW_YORK)) + timedelta(days=rng.randint(0, 2))
    series = f"HIGH{code}"
    event = f"{series}-{_day_code(day)}"
    low = rng.randint(30, 85)
    where = f"Highest temperature in {city} on {_day_title(day)}"
    outcomes = [(f"T{low}", f"{where}: below {low}°?")]
    outcomes += [(f"B{t + 0.5}", f"{where}: {t}° to {t + 1}°?") for t in range(low, low + 8, 2)]
    outcomes.append((f"T{low + 7}", f"{where}: above {low + 7}°?"))
    return [
        MarketMeta(
            ticker=f"{event}-{suffix}",
            title=title,
            category="Weather",
            close_ts_ms=_ms(day + timedelta(days=1)),
            event_ticker=event,
            series_ticker=series,
        )
        for suffix, title in outcomes
    ]


_PARTIES = (("D", "Democrats"), ("R", "Republicans"))
_STATES = (
    ("CA", "California"), ("NY", "New York"), ("TX", "Texas"), ("FL", "Florida"),
    ("GA", "Georgia"), ("PA", "Pennsylvania"), ("AZ", "Arizona"), ("MI", "Michigan"),
)  # fmt: skip


def _politics(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``KXPRESPARTY-2028-D``, ``KXSENATE-26-R``, ``KXGOVGA-26-D``: which party wins an election."""
    midterm = next(
        year for year in range(start.year, start.year + 3) if year % 2 == 0 and _election_day(year) > start
    )
    presidential = next(year for year in range(midterm, midterm + 4) if year % 4 == 0)
    kind = rng.randrange(3)
    if kind == 0:
        series, year, race = "KXPRESPARTY", presidential, f"the {presidential} presidential election"
        event = f"{series}-{year}"
    elif kind == 1:
        chamber = rng.choice(("SENATE", "HOUSE"))
        series, year, race = f"KX{chamber}", midterm, f"the {chamber.title()} in {midterm}"
        event = f"{series}-{year % 100:02d}"
    else:
        state, state_name = rng.choice(_STATES)
        series, year, race = f"KXGOV{state}", midterm, f"the {midterm} {state_name} governor race"
        event = f"{series}-{year % 100:02d}"
    return [
        MarketMeta(
            ticker=f"{event}-{party}",
            title=f"{party_name} win {race}?",
            category="Politics",
            close_ts_ms=_ms(_election_day(year) + timedelta(days=1)),
            event_ticker=event,
            series_ticker=series,
        )
        for party, party_name in _PARTIES
    ]


_INDICES = (
    # (series, name, typical level, strike step)
    ("KXINXU", "S&P 500", 6_000, 25),
    ("KXNASDAQ100U", "Nasdaq-100", 21_000, 100),
)


def _financials(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``KXINXU-26APR16H1600-T5999.99``: an index above a strike at the 4pm close."""
    series, name, level, step = rng.choice(_INDICES)
    day = _floor_day(start.astimezone(_NEW_YORK)) + timedelta(days=rng.randint(1, 7))
    while day.weekday() >= 5:
        day += timedelta(days=1)
    close = day + timedelta(hours=16)
    event = f"{series}-{_day_code(day)}H1600"
    center = round(level * rng.lognormvariate(0, 0.02) / step)
    markets = []
    for k in range(-rng.randint(2, 4), rng.randint(3, 5)):
        strike = Decimal((center + k) * step) - Decimal("0.01")
        markets.append(
            MarketMeta(
                ticker=f"{event}-T{strike}",
                title=f"{name} above {strike:,} on {_day_title(day)} at 4pm?",
                category="Financials",
                close_ts_ms=_ms(close),
                event_ticker=event,
                series_ticker=series,
            )
        )
    return markets


_MOVIES = (
    ("AVATAR3", "Avatar: Fire and Ash"), ("WICKED2", "Wicked: For Good"), ("ODYSSEY", "The Odyssey"),
    ("DUNE3", "Dune: Part Three"), ("TOYSTORY5", "Toy Story 5"), ("SPIDERMAN4", "Spider-Man: Brand New Day"),
)  # fmt: skip


def _entertainment(rng: random.Random, start: datetime) -> list[MarketMeta]:
    """``KXRT-DUNE3-80``: a film's Rotten Tomatoes score above a threshold on release."""
    code, film = rng.choice(_MOVIES)
    release = _floor_day(start.astimezone(_NEW_YORK)) + timedelta(days=rng.randint(7, 90))
    series = "KXRT"
    event = f"{series}-{code}"
    return [
        MarketMeta(
            ticker=f"{event}-{score}",
            title=f"{film} Rotten Tomatoes score above {score}%?",
            category="Entertainment",
            close_ts_ms=_ms(release),
            event_ticker=event,
            series_ticker=series,
        )
        for score in (60, 70, 80, 90)
    ]


# (event maker, share of events, hotness). Hotness sets where a family's markets tend to
# rank in popularity: crypto hourly, sports games and the Fed take most of Kalshi's trades.
_FAMILIES: tuple[tuple[_EventMaker, float, float], ...] = (
    (_crypto_hourly, 0.10, 10.0),
    (_crypto_15m, 0.08, 8.0),
    (_sports_game, 0.30, 8.0),
    (_fed, 0.06, 6.0),
    (_economics, 0.08, 1.5),
    (_weather, 0.12, 1.0),
    (_politics, 0.08, 1.0),
    (_financials, 0.08, 2.0),
    (_entertainment, 0.10, 0.5),
)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _floor_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _months_ahead(moment: datetime, months: int) -> tuple[int, int]:
    index = moment.year * 12 + moment.month - 1 + months
    return index // 12, index % 12 + 1


def _election_day(year: int) -> datetime:
    """The Tuesday after the first Monday of November, New York time."""
    first = datetime(year, 11, 1, tzinfo=_NEW_YORK)
    first_monday = first + timedelta(days=-first.weekday() % 7)
    return first_monday + timedelta(days=1)


def _day_code(day: datetime) -> str:
    """Kalshi's date in tickers: ``25DEC31``."""
    return f"{day.year % 100:02d}{_MONTHS[day.month - 1]}{day.day:02d}"


def _day_title(day: datetime) -> str:
    return f"{_MONTHS[day.month - 1].title()} {day.day}"


def _hour_title(moment: datetime) -> str:
    """``5pm``, or ``1:15am`` off the hour."""
    hour = moment.hour % 12 or 12
    suffix = "am" if moment.hour < 12 else "pm"
    return f"{hour}{suffix}" if moment.minute == 0 else f"{hour}:{moment.minute:02d}{suffix}"

"""Hypothesis strategies for Flowboard's records, shared by the test modules."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from flowboard.model import ONE_DOLLAR, Side, Trade

#: Real Kalshi ticker shapes (from Kalshi's documented examples), including the ``.`` that some of them carry.
REAL_TICKERS = (
    "KXBTCD-25DEC3117-T101999.99",
    "HIGHNY-22DEC23-B53.5",
    "KXBTC15M-26APR160100-00",
    "KXNFLGAME-25SEP25SEAARI-SEA",
    "FED-23DEC-T3.00",
)

# 2021-01-01 .. 2031-01-01 UTC: Kalshi's lifetime and then some, in Unix ms.
TS_MS_MIN = 1_609_459_200_000
TS_MS_MAX = 1_924_992_000_000

SIDES: tuple[Side, ...] = ("yes", "no")


def trades(tickers: Sequence[str] = REAL_TICKERS) -> st.SearchStrategy[Trade]:
    """Valid trades: prices strictly inside (0, $1), 0.01 to 100,000 contracts, realistic times."""
    return st.builds(
        Trade,
        trade_id=st.uuids().map(str),
        ticker=st.sampled_from(tickers),
        yes_price=st.integers(1, ONE_DOLLAR - 1),
        count=st.integers(1, 10**7),
        taker_side=st.sampled_from(SIDES),
        ts_ms=st.integers(TS_MS_MIN, TS_MS_MAX),
    )

"""Write the hand-made protocol v2 vectors in this directory.

Each vector is ``{"description", "tape_limit", "detail_limit", "frames": [frame text...],
"summary": {...}}``; ``summary`` is what the reference decoder
(``flowboard.protocol.decoder.ViewState``) folds the frames to. tests/test_vectors.py checks
that both the Python and the browser decoder (web/decoder.js) still produce it.

The hand-made streams cover the folding rules a short recording rarely hits: late trades,
ties in top trades, a clock tick across midnight UTC, resume with a new time base, resync
with a new epoch, channel changes, detail open/close, and a client that does not fold
trades. ``record_vector.py`` adds a recording from the real server.

Usage: .venv/bin/python tests/vectors/make_vectors.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowboard.protocol.decoder import ViewState

HERE = Path(__file__).parent
MINUTE = 60_000
HOUR = 60 * MINUTE
# 2025-12-31T23:59:30Z: thirty seconds before a UTC day (and hour) boundary.
T0 = 1_767_225_570_000
ALL = ["day", "hot", "hour", "today", "top", "trades"]
# The hand-made vectors were written when prices were in $0.0001: their hellos say so, which
# also pins that a decoder takes the units from the hello. ``micro_prices`` uses today's units.
UNITS = {"price": 4, "count": 2, "usd": 6}
MICRO_UNITS = {"price": 6, "count": 2, "usd": 8}


def hello(
    epoch: str,
    t0: int,
    ch: list[str],
    *,
    resumed: bool = False,
    detail: str | None = None,
    units: dict[str, int] = UNITS,
    parlays: bool | None = None,
) -> list[Any]:
    extra = {} if parlays is None else {"parlays": parlays}
    return [
        "H",
        {
            **extra,
            "v": 2,
            "epoch": epoch,
            "t0": t0,
            "units": units,
            "window_ms": 600_000,
            "spark": 20,
            "hot": 12,
            "top": 10,
            "ch": sorted(ch),
            "detail": detail,
            "resumed": resumed,
        },
    ]


def minute_of(t: int) -> int:
    return t - t % MINUTE


def hour_view(t0: int) -> list[Any]:
    first = minute_of(t0) - 59 * MINUTE
    buckets = [[(i % 7) * 1_250_000, i % 7] for i in range(60)]
    return ["a", "h", first - t0, *buckets]


def day_view(t0: int) -> list[Any]:
    hour = minute_of(t0) - minute_of(t0) % HOUR
    first = hour - 23 * HOUR
    buckets = [[i * 40_000_000, i * 30] for i in range(24)]
    return ["a", "d", first - t0, *buckets]


MARKETS = [
    ["m", 1, "KXBTCD-25DEC31-T100000", "Crypto"],
    ["m", 2, "KXNBAGAME-25DEC31LALBOS-LAL", "Sports"],
    ["m", 3, "KXFEDDECISION-26JAN-H0", "Economics"],
]


def basics() -> list[list[Any]]:
    return [
        [
            100,
            hello("e1", T0, ALL),
            *MARKETS,
            ["k", 1, 2],
            ["i", 1, "Bitcoin above $100,000 on Dec 31?", 3_600_000],
            ["w", 1, 25_000, 90_000_000, 3, 15_000, 10_000],
            ["s", 1, 0, [3600, 10_000, 1, -50_000], [3650, 5_000, 0, -20_000], [3700, 10_000, 1, -10_000]],
            ["i", 2, "Lakers vs Celtics: Lakers win?", None],
            ["w", 2, 5_000, 27_500_000, 1, 5_000, 0],
            ["s", 2, 0, [5500, 5_000, 1, -5_000]],
            ["x", [1, 3700, 10_000, 1, -10_000], [2, 5500, 5_000, 1, -5_000]],
            hour_view(T0),
            day_view(T0),
            ["d", 120, 456_000_000],
            ["T", [2, 5500, 5_000, 1, -5_000], [1, 3700, 10_000, 1, -10_000], [3, 4100, 347, 0, -15_000]],
        ],
        # A trade of a hot market: tape, top, views, today, its window and sparkline.
        [101, ["t", [1, 3750, 2_000, 1, 1_000]]],
        # A batch: a big NO trade of an untracked market tops the top trades.
        [103, ["t", [3, 4200, 30_000, 0, 500], [2, 5600, 1_234, 0, 200]]],
        # A late trade (negative dt): below newer trades in the tape; ties an existing top trade.
        [104, ["t", [1, 3700, 10_000, 1, -3_000]]],
        # Authoritative state after trades; a sparkline insert; one analytics bucket.
        [
            106,
            ["w", 1, 29_000, 104_900_000, 5, 27_000, 2_000],
            ["s", 1, 1, [3800, 100, 1, 1_700]],
            ["p", "h", minute_of(T0) - T0, 123_000_000, 4],
        ],
        # Midnight UTC: views roll, "today" starts again; a trade of the new day.
        [110, ["c", 30_000], ["t", [2, 5000, 10_000, 0, 31_800]]],
        [110, ["d", 1, 50_000_000]],
        [111, ["e", "unknown op 'x'; expected one of 'sub', 'unsub', 'detail'"]],
        # The client unsubscribed "day".
        [112, ["t", [1, 3900, 500, 1, 2_000]], ["C", "hot", "hour", "today", "top", "trades"]],
        # A new market enters the hot set and another leaves it.
        [
            113,
            ["m", 4, "PRES-2028-DJT", "Politics"],
            ["k", 1, 4],
            ["i", 4, "Who will win the 2028 presidential election?", 90 * 24 * HOUR],
            ["w", 4, 100_000, 330_000_000, 12, 60_000, 40_000],
            ["s", 4, 0, [3300, 100_000, 1, 20_000]],
        ],
        # Detail of a market that is not hot.
        [
            114,
            ["i", 3, "Fed decision in January: hold?", 30 * 24 * HOUR],
            ["w", 3, 30_347, 174_142_270, 2, 0, 30_347],
            ["s", 3, 0, [4100, 347, 0, -15_000], [4200, 30_000, 0, 500]],
            ["D", 3, [3, 4200, 30_000, 0, 500], [3, 4100, 347, 0, -15_000]],
        ],
        [115, ["t", [3, 4300, 1_000, 1, 100], [2, 5100, 700, 1, 50]]],
        # Detail closed: the market's window and sparkline are dropped.
        [116, ["D", None]],
        [117, ["t", [3, 4400, 1_000, 1, 100]]],
    ]


def resume() -> list[list[Any]]:
    t1 = T0 + 5 * MINUTE
    return [
        [
            10,
            hello("e1", T0, ["hot", "trades"]),
            *MARKETS[:2],
            ["k", 2, 1],
            ["i", 1, "Bitcoin above $100,000 on Dec 31?", 3_600_000],
            ["w", 1, 10_000, 37_000_000, 1, 10_000, 0],
            ["s", 1, 0, [3700, 10_000, 1, -10_000]],
            ["i", 2, "Lakers vs Celtics: Lakers win?", None],
            ["w", 2, 0, 0, 0, 0, 0],
            ["s", 2, 0],
            ["T", [1, 3700, 10_000, 1, -10_000]],
        ],
        [11, ["t", [2, 5500, 5_000, 1, 2_000], [2, 5400, 5_000, 0, 0]]],
        # Resumed on a new connection: same epoch, a new t0; trade deltas restart from it.
        [
            20,
            hello("e1", t1, ["hot", "trades"], resumed=True),
            ["t", [1, 3800, 2_500, 1, -1_000], [2, 5300, 100, 1, 10]],
            ["w", 2, 10_100, 50_853_000, 3, 5_100, 5_000],
        ],
        # Too far behind: resync, a new epoch in which market ids mean other markets.
        [
            25,
            ["r", 1_500],
            hello("e2", t1 + MINUTE, ["hot", "trades"]),
            ["m", 1, "KXFEDDECISION-26JAN-H0", "Economics"],
            ["k", 1],
            ["i", 1, "Fed decision in January: hold?", None],
            ["w", 1, 1_000, 4_300_000, 1, 1_000, 0],
            ["s", 1, 0, [4300, 1_000, 1, -500]],
            ["T", [1, 4300, 1_000, 1, -500]],
        ],
        [26, ["t", [1, 4350, 200, 0, 100]]],
    ]


def no_fold() -> list[list[Any]]:
    """A client without the trades channel: it gets trades only for its detail market."""
    return [
        [
            50,
            hello("e1", T0, ["hot", "hour", "today"], detail="KXBTCD-25DEC31-T100000"),
            *MARKETS[:2],
            ["k", 2],
            ["i", 2, "Lakers vs Celtics: Lakers win?", None],
            ["w", 2, 5_000, 27_500_000, 1, 5_000, 0],
            ["s", 2, 0, [5500, 5_000, 1, -5_000]],
            hour_view(T0),
            ["d", 120, 456_000_000],
            ["i", 1, "Bitcoin above $100,000 on Dec 31?", 3_600_000],
            ["w", 1, 10_000, 37_000_000, 1, 10_000, 0],
            ["s", 1, 0, [3700, 10_000, 1, -10_000]],
            ["D", 1, [1, 3700, 10_000, 1, -10_000]],
        ],
        # The detail market's trade: its window, sparkline and detail trades; no views, no today.
        [52, ["t", [1, 3600, 1_000, 0, 4_000]]],
        [
            53,
            ["w", 2, 6_000, 33_000_000, 2, 6_000, 0],
            ["s", 2, 1, [5500, 1_000, 1, 4_500]],
            ["p", "h", minute_of(T0) - T0, 99_000_000, 9],
            ["d", 130, 500_000_000],
        ],
        # A new minute (and day): whole views come again for clients that do not fold trades.
        [
            60,
            ["c", 30_000],
            ["a", "h", minute_of(T0) + MINUTE - 59 * MINUTE - T0, *([[0, 0]] * 59), [6_400_000, 1]],
            ["d", 1, 6_400_000],
        ],
        [61, ["k", 1, 2]],
    ]


def micro_prices() -> list[list[Any]]:
    """Prices with 5 and 6 decimals ($0.36505, $0.000001) in $0.000001, $ volume in $0.00000001."""
    return [
        [
            200,
            hello("e1", T0, ALL, units=MICRO_UNITS),
            *MARKETS[:2],
            ["k", 1],
            ["i", 1, "Bitcoin above $100,000 on Dec 31?", 3_600_000],
            # 100 contracts at $0.36505 (YES taker): $36.505.
            ["w", 1, 10_000, 3_650_500_000, 1, 10_000, 0],
            ["s", 1, 0, [365_050, 10_000, 1, -10_000]],
            ["x", [1, 365_050, 10_000, 1, -10_000]],
            ["T", [1, 365_050, 10_000, 1, -10_000]],
            ["d", 1, 3_650_500_000],
        ],
        # A NO taker at YES $0.365051 pays $0.634949 per contract; 3.47 contracts at $0.000001.
        [201, ["t", [1, 365_051, 10_000, 0, 1_000], [2, 1, 347, 1, 10]]],
        [202, ["t", [2, 999_999, 1, 0, 5]]],
    ]


PARLAY = "KXMVECROSSCATEGORY-S2025A1B2C3D4E5F-0123456789A"


def trader() -> list[list[Any]]:
    """Parlays left out of the top trades, then included (`P`); a watchlist (`W`) with its
    markets' live windows; the hot events (`E`) naming markets described once by `i`."""
    channels = ["events", "hot", "top", "trades"]
    return [
        [
            300,
            hello("e1", T0, channels, units=MICRO_UNITS, parlays=False),
            *MARKETS,
            ["m", 5, PARLAY, "Sports", 1],
            ["k", 1],
            ["i", 1, "Bitcoin above $100,000 on Dec 31?", 3_600_000],
            ["w", 1, 10_000, 3_650_500_000, 1, 10_000, 0],
            ["s", 1, 0, [365_050, 10_000, 1, -10_000]],
            ["x", [1, 365_050, 10_000, 1, -10_000]],
            ["i", 3, "Fed decision in January: hold?", None],
            ["E", ["KXBTCD-25DEC31", 3_650_500_000, 1, 10_000, 1, [1, 3_650_500_000, 365_050]],
             ["KXFEDDECISION-26JAN", 1_000_000, 1, 100, 1, [3, 1_000_000, 10_000]]],
            ["T", [5, 10_000, 1_000_000, 1, -20_000], [1, 365_050, 10_000, 1, -10_000]],
            ["W", 2],
            ["i", 2, "Lakers vs Celtics: Lakers win?", None],
            ["w", 2, 100, 55_000_000, 1, 100, 0],
            ["s", 2, 0, [550_000, 100, 1, -30_000]],
        ],
        # A parlay's large trade: on the tape, not in the top trades; a watched market's trade folds.
        [301, ["t", [5, 20_000, 5_000_000, 1, 1_000], [2, 560_000, 200, 0, 10]]],
        # Parlays on: the top trades come afresh, and the next parlay trade goes into them.
        [
            303,
            ["P", 1],
            ["x", [5, 20_000, 5_000_000, 1, 1_000], [5, 10_000, 1_000_000, 1, -20_000],
             [1, 365_050, 10_000, 1, -10_000]],
            ["E", ["KXMVECROSSCATEGORY-S2025A1B2C3D4E5F", 110_000_000_000, 2, 6_000_000, 1,
                   [5, 110_000_000_000, 20_000]]],
        ],
        [304, ["t", [5, 30_000, 400_000, 1, 100]]],
        # The watchlist changes: market 2 is dropped, market 3 is tracked from here on.
        [
            305,
            ["W", 3],
            ["w", 3, 100, 1_000_000, 1, 100, 0],
            ["s", 3, 0, [100_000, 100, 1, -1_000]],
        ],
        [306, ["t", [3, 110_000, 50, 0, 100], [2, 570_000, 100, 1, 1]]],
        # Parlays off again: a parlay's trade, however large, stays out of the top trades.
        [307, ["P", 0], ["x", [1, 365_050, 10_000, 1, -10_000]]],
        [308, ["t", [5, 40_000, 9_000_000, 1, 50], [1, 370_000, 20_000, 1, 1]]],
    ]  # fmt: skip
def alerts() -> list[list[Any]]:
    """The trader channels alone: an alert snapshot, live alerts (late, tied), flows and movers
    replaced, a subscription to them later getting their whole state."""
    return [
        [
            300,
            hello("e1", T0, ["alerts", "flows"], units=MICRO_UNITS),
            *MARKETS,
            # Newest first: an accumulation run (2 trades over 3 min) and a whale trade.
            [
                "A",
                0,
                [2, 1, 0, 500_000_000_000, 900_000, 2, -5_000, -185_000],
                [1, 0, 1, 120_000_000_000, 20_000, 1, -60_000, -60_000],
            ],
            # A YES flow of 100 contracts at VWAP $0.60, a NO flow of 3.47 at $0.36505.
            ["F", [1, 1, 6_000_000_000, 10_000, 2, 600_000], [2, 0, 126_672_350, 347, 1, 365_050]],
        ],
        # Live: a late whale (older than the newest held), then two at one time: later arrival first.
        [301, ["A", 1, [3, 0, 1, 150_000_000_000, 30_000, 1, -30_000, -30_000]]],
        [
            302,
            [
                "A",
                1,
                [1, 0, 0, 100_000_000_000, 25_000, 1, 1_000, 1_000],
                [2, 0, 1, 110_000_000_000, 12_000, 1, 1_000, 1_000],
            ],
        ],
        [303, ["F", [2, 0, 126_672_350, 347, 1, 365_050]]],
        [
            304,
            ["C", "alerts", "flows", "movers"],
            ["M", "10m", [3, 400_000, 450_000, 50_000_000_000, 7]],
            ["M", "1h", [3, 380_000, 450_000, 90_000_000_000, 12], [1, 620_000, 600_000, 30_000_000_000, 4]],
        ],
        [305, ["M", "10m"]],
    ]


VECTORS = {
    "basics": (
        "Snapshot, trades (batched, late, tied), keyed state, midnight clock, channels, detail",
        basics,
    ),
    "resume": ("Resume with a new t0, then resync into a new epoch with reused market ids", resume),
    "no_fold": ("A client that does not fold trades: detail-only trades, p/a/d updates", no_fold),
    "micro_prices": ("Prices with 5 and 6 decimals, exact $ volume in $0.00000001", micro_prices),
    "trader": ("Parlays out of and into the top trades, a watchlist, the hot events", trader),
    "alerts": ("Alerts (snapshot, live, late, tied), flows and movers replaced", alerts),
}


def frame_text(frame: list[Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def write(
    name: str, description: str, frames: list[str], *, tape_limit: int = 200, detail_limit: int = 50
) -> None:
    state = ViewState(tape_limit=tape_limit, detail_limit=detail_limit)
    for frame in frames:
        state.apply_frame(frame)
    vector = {
        "description": description,
        "tape_limit": tape_limit,
        "detail_limit": detail_limit,
        "frames": frames,
        "summary": state.summary(),
    }
    (HERE / f"{name}.json").write_text(json.dumps(vector, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    for name, (description, build) in VECTORS.items():
        write(name, description, [frame_text(f) for f in build()])


if __name__ == "__main__":
    main()

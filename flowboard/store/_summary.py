"""What a restart reads from the store, and the pure parts of reading it: the day's trades
summarised per minute (with their ids for the de-duplication horizon only), and the recent
trades whole (``Aggregator.restore`` takes both).

Loading a busy day's million trades as ``Trade`` records and replaying them costs tens of
seconds; a minute's totals, ids and markets are all the aggregator keeps of older trades.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

import attrs

from flowboard.aggregate.aggregator import MinuteSummary
from flowboard.model import MINUTE_MS, ONE_DOLLAR, Trade

from ._pending import StoredRow, trades_of

#: Largest count whose $ volume fits a signed 64-bit integer at any taker price, so that SQL
#: can multiply; beyond it (or with a price outside 0..$1) the SQL gives NULL and the minute is
#: summed again in Python, exactly.
_MAX_SQL_COUNT = (2**63 - 1) // ONE_DOLLAR

#: A trade's $ volume (``Trade.usd``) in SQL common to SQLite and PostgreSQL, or NULL where the
#: product might overflow.
USD_SQL = (
    f"CASE WHEN count BETWEEN 0 AND {_MAX_SQL_COUNT} AND yes_price BETWEEN 0 AND {ONE_DOLLAR} "
    f"THEN count * CASE taker_side WHEN 'yes' THEN yes_price ELSE {ONE_DOLLAR} - yes_price END END"
)

#: A trade's signed contracts, YES takers +, NO takers - (for the net flow), in SQL.
FLOW_SQL = "CASE taker_side WHEN 'yes' THEN count ELSE -count END"

#: (ts_ms, trade_id, ticker, usd or None, count, signed count), in (ts_ms, arrival) order.
SummaryRow = tuple[int, str, str, int | None, int, int]


@attrs.frozen
class StoredSummary:
    """The stored trades since a time, as a restart needs them."""

    minutes: list[MinuteSummary]  # every trade, oldest minute first
    recent: list[Trade]  # whole, in (ts_ms, arrival) order: the window, the tape, each market's latest


def summarize_minutes(
    chunks: Iterable[Sequence[SummaryRow]], exact_usd: Callable[[int], int], ids_since_ms: int
) -> list[MinuteSummary]:
    """Group rows, read in ``chunks``, by minute. ``exact_usd(minute_start_ms)`` sums a minute
    in Python; it is only called for a minute with a NULL usd (see ``USD_SQL``). Trade ids are
    kept for the minutes from ``ids_since_ms`` on: memory holds one chunk of rows and a day of
    minute totals, never a day of rows."""
    minutes: list[MinuteSummary] = []
    carried: Sequence[SummaryRow] = ()
    for chunk in chunks:
        rows = [*carried, *chunk] if carried else chunk
        if not rows:
            continue
        # The last minute of a chunk may go on in the next one.
        last = rows[-1][0]
        cut = bisect_left(rows, last - last % MINUTE_MS, key=lambda row: row[0])
        minutes += _whole_minutes(rows[:cut], exact_usd, ids_since_ms)
        carried = rows[cut:]
    return minutes + _whole_minutes(carried, exact_usd, ids_since_ms)


def _whole_minutes(
    rows: Sequence[SummaryRow], exact_usd: Callable[[int], int], ids_since_ms: int
) -> list[MinuteSummary]:
    if not rows:
        return []
    # Columns, then slices per minute: the work per trade stays in C.
    ts_column, ids, tickers, usds, counts, flows = zip(*rows, strict=True)
    minutes = []
    start = 0
    while start < len(ts_column):
        minute_ms = ts_column[start] - ts_column[start] % MINUTE_MS
        end = bisect_left(ts_column, minute_ms + MINUTE_MS, start)
        minute_usds = usds[start:end]
        usd = exact_usd(minute_ms) if None in minute_usds else sum(minute_usds)
        minutes.append(
            MinuteSummary(
                start_ms=minute_ms,
                usd=usd,
                trades=end - start,
                contracts=sum(counts[start:end]),
                net_flow=sum(flows[start:end]),
                trade_ids=ids[start:end] if minute_ms >= ids_since_ms else (),
                tickers=tuple(dict.fromkeys(tickers[start:end])),
            )
        )
        start = end
    return minutes


def merge_recent(*runs: Iterable[StoredRow]) -> list[Trade]:
    """The trades of every run of stored rows, once each, in (ts_ms, arrival) order."""
    by_id = {row[0]: row for run in runs for row in run}
    return trades_of(sorted(by_id.values(), key=lambda row: (row[5], row[6])))

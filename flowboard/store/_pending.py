"""The writer's pure parts: the bounded queue of trades waiting for the database, its
statistics record, the retry schedule and the keyset cursors used for paging."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any, Literal

import attrs
from sortedcontainers import SortedList

from flowboard.model import MarketMeta, Trade

#: A position in (ts_ms, arrival) order, the order of trades everywhere: by time, and the trades
#: of one millisecond in the order they arrived. Arrival numbers start at 1, so "strictly after
#: (ts, 0)" means "at ts or later".
Cursor = tuple[int, int]

#: Where a newest-first page of one market starts: (ts_ms, trade_id) of the last trade of the
#: page before (the trade id stands for its arrival number), or (ts_ms, "") to start below ts_ms.
PageCursor = tuple[int, str]

#: A stored trade as read back: ``Trade``'s fields, then its arrival number.
StoredRow = Sequence[Any]

_LATEST_POSSIBLE_MS = 2**63 - 1


def page_cursor(before_ms: int | None, before_trade_id: str | None) -> PageCursor:
    """The cursor a newest-first page starts strictly before."""
    if before_ms is None:
        return (_LATEST_POSSIBLE_MS, "")
    return (before_ms, before_trade_id or "")


def cursor_after(rows: Sequence[StoredRow], previous: Cursor) -> Cursor:
    """The cursor after the last of ``rows`` (in cursor order), or ``previous`` if there are none."""
    if not rows:
        return previous
    last = rows[-1]
    return (last[5], last[6])


def trades_of(rows: Iterable[StoredRow]) -> list[Trade]:
    return [Trade(*row[:6]) for row in rows]


def meta_row(meta: MarketMeta) -> tuple[Any, ...]:
    """A ``markets`` row: MarketMeta's fields in their order, the order of the stores' metadata
    columns (``load_meta`` reads a row back as ``MarketMeta(*row)``)."""
    return attrs.astuple(meta, recurse=False)


def retry_delay_s(failures_in_a_row: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff: ``initial_s`` after the first failure, doubling up to ``max_s``."""
    return min(max_s, initial_s * 2.0 ** max(0, failures_in_a_row - 1))


@attrs.frozen
class StoreStatistics:
    """A snapshot of the store's writer.

    ``queued + written_total + dropped + rejected`` is every trade ever offered.
    """

    queued: int  # offered, not yet committed (includes a batch being written)
    written_total: int  # committed; a re-written duplicate counts, the table keeps one row
    batches: int  # commits
    failures: int  # failed batch attempts, each retried
    dropped: int  # refused because the queue was full
    rejected: int  # refused by the database itself (e.g. a value out of range), logged one by one
    last_error: str | None  # the latest failure, kept after recovery
    healthy: bool  # the latest attempt succeeded and the queue is less than half full
    last_commit_ms: int | None  # wall time of the latest commit, Unix ms


#: What the store can say of a trade it may have dropped: its id is kept ("yes"), the ids of
#: trades as old were forgotten for room ("maybe"), or it was never dropped ("no").
Dropped = Literal["yes", "maybe", "no"]


class DroppedIds:
    """The ids of trades the full queue dropped, so that one the feed sends again is stored and
    not counted twice: the views counted it when it first came, the store never got it.

    At most ``capacity`` ids; past it the oldest by trade time are forgotten, and every trade
    at or before the latest of those times becomes a "maybe".
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, int] = {}  # trade id -> trade time
        self._by_time: SortedList = SortedList()  # (trade time, trade id)
        self._forgotten_through_ms: int | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, trade: Trade) -> None:
        if trade.trade_id in self._ids:
            return
        self._ids[trade.trade_id] = trade.ts_ms
        self._by_time.add((trade.ts_ms, trade.trade_id))
        if len(self._ids) > self.capacity:
            ts_ms, trade_id = self._by_time.pop(0)
            del self._ids[trade_id]
            self._forgotten_through_ms = max(ts_ms, self._forgotten_through_ms or ts_ms)

    def discard(self, trade: Trade) -> None:
        ts_ms = self._ids.pop(trade.trade_id, None)
        if ts_ms is not None:
            self._by_time.remove((ts_ms, trade.trade_id))

    def of(self, trade: Trade) -> Dropped:
        if trade.trade_id in self._ids:
            return "yes"
        if self._forgotten_through_ms is not None and trade.ts_ms <= self._forgotten_through_ms:
            return "maybe"
        return "no"


class PendingTrades:
    """Trades offered but not yet committed, oldest first, never more than ``capacity``.

    What does not fit is dropped and counted: the producer must never wait for the database.
    The newest trades are the ones dropped, so what is kept stays one contiguous run. Their
    ids are kept (``dropped_ids``) until they are offered again.
    """

    def __init__(self, capacity: int, dropped_ids_kept: int) -> None:
        self.capacity = capacity
        self.dropped_total = 0
        self.dropped_ids = DroppedIds(dropped_ids_kept)
        self._trades: deque[Trade] = deque()

    def __len__(self) -> int:
        return len(self._trades)

    def offer(self, trades: Iterable[Trade]) -> int:
        """Queue what fits; return how many were dropped."""
        incoming = iter(trades)
        fitting = list(islice(incoming, self.capacity - len(self._trades)))
        self._trades.extend(fitting)
        if len(self.dropped_ids):
            for trade in fitting:
                self.dropped_ids.discard(trade)
        dropped = 0
        for trade in incoming:
            self.dropped_ids.add(trade)
            dropped += 1
        self.dropped_total += dropped
        return dropped

    def trade_ids(self) -> set[str]:
        return {trade.trade_id for trade in self._trades}

    def oldest(self, limit: int) -> list[Trade]:
        return list(islice(self._trades, limit))

    def discard_oldest(self, count: int) -> None:
        for _ in range(count):
            self._trades.popleft()

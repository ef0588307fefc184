"""The aggregator's inputs as stream entries, and its state as a snapshot: what an ingest
publishes and every edge replays. Pure: no I/O, no trio.

The aggregator is deterministic (same inputs, same ``now_ms`` -> same events), so an edge
that applies the same inputs in the same order to a copy of the ingest's state produces the
same events, numbered with the same ``seq``: its clients see what the ingest's would, and a
client can resume on any edge. Publishing inputs rather than events keeps entries small
(a trade is one short array) and lets an edge answer every read (API, snapshots) itself.

One stream entry is one ``Batch``: the inputs behind one ``Hub.publish`` call, so an edge
publishes in the same steps, with the same ``now_ms``. Entry ids are ``STAMP-N``: ``STAMP``
is the ingest's start (Unix ms, raised above anything already in the stream) and ``N`` counts
its batches from 1, so an edge sees a gap (trimmed entries, a restarted Redis) or a new
ingest (a new stamp) from the ids alone.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import attrs
import orjson

from flowboard.aggregate.aggregator import Aggregator
from flowboard.aggregate.events import Event
from flowboard.errors import StreamFormatError
from flowboard.model import MarketMeta, Trade

#: Bumped when the entry or snapshot format changes; an edge refuses what it cannot read.
#: 2: prices in $0.000001 (were $0.0001), market metadata with open interest and liquidity.
#: 3: the aggregator keeps ids for its de-duplication horizon only (another state), and a
#: trade input may carry the ingest's store's word (``absent_from_store``).
#: 4: market metadata with the parlay collection (``mve_collection_ticker``); the aggregator keeps
#: its rankings without parlays too, and the hot events.
#: 5: the aggregator holds the trader tools' state (alerts, flows, movers, published lists).
#: 6: the aggregator forgets markets quiet for a day (their slots in its state are None).
FORMAT_VERSION = 6


@attrs.frozen(slots=True)
class AddTrade:
    trade: Trade
    now_ms: int
    absent_from_store: bool = False  # the ingest asked its store (Aggregator.needs_store_check)


@attrs.frozen(slots=True)
class Advance:
    now_ms: int


@attrs.frozen(slots=True)
class SetMeta:
    meta: MarketMeta


Input = AddTrade | Advance | SetMeta


@attrs.frozen(slots=True)
class Batch:
    """The inputs behind one ``Hub.publish``; ``seq`` is the hub's seq after it (edges check it)."""

    now_ms: int
    seq: int
    inputs: tuple[Input, ...]


@attrs.frozen(slots=True, order=True)
class Offset:
    """A stream entry id: the ingest's ``stamp`` and its batch number (0: before its first batch)."""

    stamp: int
    batch: int

    def __str__(self) -> str:
        return f"{self.stamp}-{self.batch}"

    def follows(self, other: Offset) -> bool:
        """Whether this entry comes right after ``other`` with nothing missing in between."""
        return self.stamp == other.stamp and self.batch == other.batch + 1

    @classmethod
    def parse(cls, text: str | bytes) -> Offset:
        raw = text.decode() if isinstance(text, bytes) else text
        stamp, sep, batch = raw.partition("-")
        if not sep or not stamp.isdigit() or not batch.isdigit():
            raise StreamFormatError(f"stream entry id must be STAMP-N, got {raw[:40]!r}")
        return cls(int(stamp), int(batch))


def apply(agg: Aggregator, batch: Batch) -> list[Event]:
    """Replay ``batch`` on ``agg``: the events the ingest published for it."""
    events: list[Event] = []
    for item in batch.inputs:
        if isinstance(item, AddTrade):
            events.extend(agg.add_trade(item.trade, item.now_ms, absent_from_store=item.absent_from_store))
        elif isinstance(item, Advance):
            events.extend(agg.advance(item.now_ms))
        else:
            events.extend(agg.set_meta(item.meta))
    return events


# -- entries: JSON arrays of exact integers ---------------------------------------------------
# [version, now_ms, seq, input...] with each input one of
#   ["t", now_ms, trade_id, ticker, yes_price, count, "y"|"n", ts_ms] (+ 1 when absent_from_store)
#   ["a", now_ms]
#   ["m", ticker, title, category, close_ts_ms|null, event_ticker, series_ticker,
#    open_interest|null, liquidity|null]


def _encode_input(item: Input) -> list[Any]:
    if isinstance(item, AddTrade):
        t = item.trade
        side = "y" if t.taker_side == "yes" else "n"
        entry = ["t", item.now_ms, t.trade_id, t.ticker, t.yes_price, t.count, side, t.ts_ms]
        # Only a trade older than the ids the aggregator remembers carries the flag: the
        # common entry keeps its length, and an edge must know the ingest's store said yes.
        return [*entry, 1] if item.absent_from_store else entry
    if isinstance(item, Advance):
        return ["a", item.now_ms]
    return ["m", *attrs.astuple(item.meta, recurse=False)]


def encode_batch(batch: Batch) -> bytes:
    return orjson.dumps([FORMAT_VERSION, batch.now_ms, batch.seq, *map(_encode_input, batch.inputs)])


def _decode_input(raw: Any) -> Input:
    code = raw[0]
    if code == "t":
        _, now_ms, trade_id, ticker, yes_price, count, side, ts_ms, *flag = raw
        if flag not in ([], [1]):
            raise StreamFormatError(f"a trade input ends in 1 or nothing, got {flag!r}")
        trade = Trade(trade_id, ticker, yes_price, count, "yes" if side == "y" else "no", ts_ms)
        return AddTrade(trade, now_ms, absent_from_store=bool(flag))
    if code == "a":
        return Advance(raw[1])
    if code == "m":
        # MarketMeta's fields in order, as _encode_input writes them.
        return SetMeta(MarketMeta(*raw[1:]))
    raise StreamFormatError(f"unknown input code {code!r}")


def decode_batch(data: bytes) -> Batch:
    try:
        raw = orjson.loads(data)
        if raw[0] != FORMAT_VERSION:
            raise StreamFormatError(f"stream entry format {raw[0]!r}, this version reads {FORMAT_VERSION}")
        return Batch(raw[1], raw[2], tuple(_decode_input(item) for item in raw[3:]))
    except (orjson.JSONDecodeError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise StreamFormatError(f"unreadable stream entry {data[:60]!r}: {exc}") from None


class JournalingAggregator(Aggregator):
    """The ingest's aggregator: every input it is given is also written down, whoever gives it
    (feed, clock, metadata), so nothing that changes the state can miss the stream."""

    def __init__(self, **sizes: int) -> None:
        super().__init__(**sizes)
        self._journal: list[Input] = []

    def add_trade(self, trade: Trade, now_ms: int, *, absent_from_store: bool = False) -> list[Event]:
        self._journal.append(AddTrade(trade, now_ms, absent_from_store))
        return super().add_trade(trade, now_ms, absent_from_store=absent_from_store)

    def advance(self, now_ms: int) -> list[Event]:
        self._journal.append(Advance(now_ms))
        return super().advance(now_ms)

    def set_meta(self, meta: MarketMeta) -> list[Event]:
        self._journal.append(SetMeta(meta))
        return super().set_meta(meta)

    def take_journal(self) -> tuple[Input, ...]:
        """The inputs since the last call, oldest first."""
        inputs, self._journal = tuple(self._journal), []
        return inputs


# -- snapshots: the aggregator's state as bytes -----------------------------------------------
# Pickle, because the aggregator is plain Python objects (sorted containers keyed by module
# functions) and pickle copies them exactly and fast. The bytes come from our own Redis; even so
# the unpickler only builds classes from the modules the state is made of, so a tampered
# snapshot cannot name os.system.

_STATE_MODULES = ("flowboard.", "sortedcontainers.")
_STATE_BUILTINS = {("builtins", "set"), ("builtins", "frozenset"), ("copyreg", "_reconstructor")}
_STATE_BUILTINS |= {("builtins", "object"), ("builtins", "list"), ("builtins", "dict")}


class _StateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_STATE_MODULES) or (module, name) in _STATE_BUILTINS:
            return super().find_class(module, name)
        raise StreamFormatError(f"snapshot names {module}.{name}, which no aggregator state holds")


def dump_state(agg: Aggregator) -> bytes:
    """The aggregator's state (not its journal), for ``load_state`` in another process."""
    state = {name: value for name, value in vars(agg).items() if name != "_journal"}
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def load_state(agg: Aggregator, data: bytes) -> None:
    """Make ``agg`` (in place: the app and the hub hold it) the aggregator ``dump_state`` saw."""
    try:
        state = _StateUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise StreamFormatError(f"unreadable snapshot: {exc}") from None
    if not isinstance(state, dict) or "_markets" not in state:
        raise StreamFormatError("snapshot is not an aggregator's state")
    vars(agg).clear()
    vars(agg).update(state)

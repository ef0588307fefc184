"""Protocol v2 without a network: the per-client session against the reference decoder.

The contract these tests pin: whatever the trades, the clock and the client's read pattern,
folding the frames a session builds gives exactly the view ``expected_summary`` reads from
the aggregator — with trades batched and state conflated for a client that fell behind.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowboard.aggregate.aggregator import Aggregator
from flowboard.errors import DecodeError, ProtocolError
from flowboard.model import MINUTE_MS, MarketMeta, Trade
from flowboard.protocol import v2
from flowboard.protocol.decoder import ViewState, expected_summary
from flowboard.protocol.session import SessionLimits
from flowboard.server.connection import GroupFrames
from flowboard.server.hub import Client, Hub

TICKERS = [f"KXTEST-26JAN01-T{i}" for i in range(8)]
# 2026-11-27 23:58 UTC: runs cross a minute, an hour and a UTC midnight.
START_MS = 1_795_823_880_000


def small_aggregator() -> Aggregator:
    """Small sizes so that short runs churn the hot set, the top list and sparklines."""
    return Aggregator(window_ms=20_000, sparkline_len=4, hot_size=3, top_size=3, tape_size=200)


class Harness:
    """An aggregator, a hub and decoders for its clients, driven synchronously."""

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.agg = small_aggregator()
        self.limits = limits or SessionLimits(snapshot_tape=200, detail_trades=50)
        self.hub = Hub(self.agg, epoch="e1", ring_size=10_000, limits=self.limits)
        self.now = START_MS
        self.hub.publish(self.agg.advance(self.now), self.now)
        self.views: dict[Client, ViewState] = {}
        self.frames: dict[Client, list[bytes]] = {}
        self._next_id = 0

    def connect(
        self,
        channels: frozenset[str] = v2.DEFAULT_CHANNELS,
        detail: str | None = None,
        resume: tuple[str, int] | None = None,
        view: ViewState | None = None,
    ) -> Client:
        client = self.hub.connect(channels=channels, detail=detail, resume=resume, now_ms=self.now)
        self.views[client] = view if view is not None else ViewState(tape_limit=200)
        self.frames[client] = []
        return client

    def trade(self, ticker: str, price: int, count: int, side: str, lateness_ms: int = 0) -> Trade:
        self._next_id += 1
        trade = Trade(
            trade_id=f"t{self._next_id}",
            ticker=ticker,
            yes_price=price,
            count=count,
            taker_side="yes" if side == "yes" else "no",
            ts_ms=self.now - lateness_ms,
        )
        self.hub.publish(self.agg.add_trade(trade, self.now), self.now)
        return trade

    def advance(self, ms: int) -> None:
        self.now += ms
        self.hub.publish(self.agg.advance(self.now), self.now)

    def read(self, client: Client, *, later_ms: int = 0) -> bytes | None:
        """Build and fold one frame; ``later_ms`` lets held-back analytics come due."""
        built = client.session.build_frame(self.agg, self.now + later_ms)
        if built is None:
            return None
        frame = built.payload
        self.frames[client].append(frame)
        self.views[client].apply_frame(frame)
        return frame

    def read_until_idle(self, client: Client) -> None:
        while self.read(client, later_ms=60_000) is not None:
            pass

    def check(self, client: Client) -> None:
        view = self.views[client]
        session = client.session
        wanted_detail = session._wanted_detail
        detail = (
            wanted_detail
            if wanted_detail is not None and self.agg.market_id(wanted_detail) is not None
            else None
        )
        expected = expected_summary(
            self.agg,
            channels=session.channels,
            detail=detail,
            tape_len=200,
            detail_len=50,
        )
        actual = view.summary()
        actual.pop("seq")
        assert actual == expected


def events_of(frame: bytes) -> list[Any]:
    decoded: list[Any] = orjson.loads(frame)
    return decoded[1:]


def codes(frame: bytes) -> list[str]:
    return [event[0] for event in events_of(frame)]


def test_first_frame_is_a_snapshot_of_the_default_view() -> None:
    """A client that sends nothing gets hello + every default channel's state in one frame."""
    h = Harness()
    h.trade(TICKERS[0], 3600, 10000, "yes")
    client = h.connect()
    frame = h.read(client)
    assert frame is not None
    assert codes(frame)[:2] == ["H", "m"]
    assert {"k", "i", "w", "s", "x", "a", "d", "T"} <= set(codes(frame))
    h.check(client)


def test_each_frame_says_what_it_carries() -> None:
    """The session tags each frame for the metrics (no sniffing of the JSON): the first one a
    snapshot, one with trades ``trades`` (whatever state came along), one without ``state``;
    a resumed hello is not a snapshot."""
    h = Harness()
    client = h.connect()
    built = client.session.build_frame(h.agg, h.now)
    assert built is not None and built.kind == "snapshot"
    h.trade(TICKERS[0], 3600, 10000, "yes")
    built = client.session.build_frame(h.agg, h.now)
    assert built is not None and built.kind == "trades" and "t" in codes(built.payload)
    h.advance(25_000)  # the window expires: state only
    built = client.session.build_frame(h.agg, h.now)
    assert built is not None and built.kind == "state" and "t" not in codes(built.payload)
    resumed = h.connect(resume=("e1", h.hub.seq))
    built = resumed.session.build_frame(h.agg, h.now + 60_000)
    assert built is not None and built.kind == "state" and codes(built.payload)[0] == "H"


def test_caught_up_client_gets_each_trade_in_a_frame_of_its_own() -> None:
    """A reader that keeps up gets one small `t` frame per trade, nothing it can derive."""
    h = Harness()
    client = h.connect()
    h.read(client)
    h.trade(TICKERS[0], 3600, 10000, "yes")
    first = h.read(client)
    assert first is not None
    h.trade(TICKERS[0], 3700, 500, "no")
    frame = h.read(client)
    assert frame is not None
    # Market 0 was defined by the previous frame; the window and sparkline are derived.
    assert codes(frame) == ["t"]
    assert events_of(frame)[0][1][:4] == [0, 3700, 500, 0]
    h.check(client)


def test_trade_bytes_are_compact() -> None:
    """A trade of a known market costs a few dozen bytes, frame envelope included."""
    h = Harness()
    client = h.connect()
    h.trade(TICKERS[0], 3600, 10000, "yes")
    h.read_until_idle(client)
    h.advance(137)
    h.trade(TICKERS[0], 3600, 10000, "yes")
    frame = h.read(client)
    assert frame is not None
    assert len(frame) <= 40, frame


def test_stalled_client_gets_one_batched_conflated_frame_when_it_resumes_reading() -> None:
    """Trades pile up in order while state conflates to its latest value; the view ends exact."""
    h = Harness()
    client = h.connect()
    h.read_until_idle(client)
    for i in range(60):
        h.trade(TICKERS[i % 5], 1000 + 100 * i, 100 + i, "yes" if i % 3 else "no")
        h.advance(700)
    frame = h.read(client)
    assert frame is not None
    assert h.read(client) is None
    trades = [event for event in events_of(frame) if event[0] == "t"]
    assert len(trades) == 1 and len(trades[0]) == 61
    windows = [event[1] for event in events_of(frame) if event[0] == "w"]
    assert len(windows) == len(set(windows)), "each market's window at most once"
    assert client.session.statistics().conflated > 0
    h.check(client)


def test_client_past_the_bound_is_resynced_with_a_count_of_what_it_missed() -> None:
    """More pending trades than the bound: `r` with the count, then a fresh snapshot."""
    h = Harness(SessionLimits(max_pending_trades=10, snapshot_tape=200))
    client = h.connect()
    h.read_until_idle(client)
    for i in range(25):
        h.trade(TICKERS[i % 3], 5000, 100, "yes")
    frame = h.read(client)
    assert frame is not None
    events = events_of(frame)
    assert events[0] == ["r", 25]
    assert events[1][0] == "H" and events[1][1]["resumed"] is False
    assert h.views[client].missed == 25
    h.check(client)


def test_client_that_keeps_falling_behind_is_marked_for_a_4008_close() -> None:
    """Past max_resyncs within the period the session gives a reason to close (4008)."""
    h = Harness(SessionLimits(max_pending_trades=2, max_resyncs=2, snapshot_tape=200))
    client = h.connect()
    h.read_until_idle(client)
    for _ in range(3):
        for i in range(3):
            h.trade(TICKERS[i], 5000, 100, "yes")
        h.read_until_idle(client)
    assert client.session.close_reason is not None
    assert "too slow" in client.session.close_reason


def test_stalled_client_does_not_change_what_a_fast_client_receives() -> None:
    """Fan-out is per client: a stalled reader's backlog leaves the fast one's frames unchanged."""
    alone = Harness()
    shared = Harness()
    fast_alone = alone.connect()
    fast = shared.connect()
    stalled = shared.connect()
    shared.read(stalled)  # it took its snapshot, then stopped reading
    for h, client in ((alone, fast_alone), (shared, fast)):
        for i in range(30):
            h.trade(TICKERS[i % 4], 4000 + i, 100, "yes")
            h.read(client)
            h.advance(300)
    assert alone.frames[fast_alone] == shared.frames[fast]
    assert stalled.session.pending_trades == 30
    shared.read_until_idle(stalled)
    shared.check(stalled)


def test_window_expiry_reaches_the_client_as_authoritative_values() -> None:
    """Old trades leave the window on the clock; the client gets `w` without any new trade."""
    h = Harness()
    client = h.connect()
    h.trade(TICKERS[0], 5000, 100, "yes")
    h.read_until_idle(client)
    h.advance(20_000)
    frame = h.read(client)
    assert frame is not None
    assert "w" in codes(frame) or "k" in codes(frame)
    h.check(client)
    assert h.views[client].summary()["hot"] == []


def test_non_folding_client_gets_sparkline_diffs_and_analytics_updates() -> None:
    """A hot+hour client without trades gets `s` appends and `p` updates, not trades."""
    h = Harness()
    client = h.connect(frozenset({"hot", "hour"}))
    h.trade(TICKERS[0], 5000, 100, "yes")
    h.read_until_idle(client)
    h.advance(3_000)
    h.trade(TICKERS[0], 5100, 200, "no")
    h.advance(3_000)
    frame = h.read(client)
    assert frame is not None
    assert "t" not in codes(frame)
    sparks = [event for event in events_of(frame) if event[0] == "s"]
    assert sparks and sparks[0][2] == 1 and len(sparks[0]) == 4
    assert "p" in codes(frame)
    h.check(client)


def test_detail_subscription_sends_that_market_and_its_trades_only() -> None:
    """`detail` gives one market's state and recent trades, then its live trades."""
    h = Harness()
    for i in range(6):
        h.trade(TICKERS[i % 2], 5000 + i, 100, "yes")
    client = h.connect(frozenset({"today"}))
    h.read_until_idle(client)
    client.session.set_detail(TICKERS[1])
    frame = h.read(client)
    assert frame is not None
    assert "D" in codes(frame)
    h.trade(TICKERS[0], 5000, 100, "yes")
    h.trade(TICKERS[1], 5200, 300, "no")
    h.advance(3_000)
    h.read_until_idle(client)
    trades_sent = [e for f in h.frames[client] for e in events_of(f) if e[0] == "t"]
    assert [len(e) for e in trades_sent] == [2]
    h.check(client)
    client.session.set_detail(None)
    h.read_until_idle(client)
    assert "detail" not in h.views[client].summary()


def test_unknown_detail_market_gets_an_error_event() -> None:
    """A detail request for a market never seen is answered with `e`, the stream goes on."""
    h = Harness()
    client = h.connect()
    h.read_until_idle(client)
    client.session.set_detail("NOPE-1")
    h.read_until_idle(client)
    assert h.views[client].errors and "NOPE-1" in h.views[client].errors[0]


def test_a_market_forgotten_after_a_quiet_day_leaves_each_client_and_its_detail() -> None:
    """A market without a trade for a day leaves the aggregator; a client whose detail it was
    is told (`D` null and an error) and keeps streaming, the session's mirror lets go of the
    id, and the market trading again comes back under a new id, defined afresh."""
    h = Harness()
    h.trade(TICKERS[0], 5000, 100, "yes")
    h.trade(TICKERS[1], 5100, 100, "no")
    folding = h.connect()
    watching = h.connect(frozenset({"today"}), detail=TICKERS[0])
    for client in (folding, watching):
        h.read_until_idle(client)
    assert folding.session._known >= {0, 1} and watching.session._detail == 0
    h.advance(25 * 3_600_000)
    h.trade(TICKERS[1], 5200, 100, "yes")
    for client in (folding, watching):
        h.read_until_idle(client)
        h.check(client)
    assert h.agg.market_ids() == [2]
    assert 0 not in folding.session._known and 1 not in folding.session._known
    assert watching.session._detail is None
    assert h.views[watching].errors and TICKERS[0] in h.views[watching].errors[-1]
    defined = [e for f in h.frames[folding] for e in events_of(f) if e[0] == "m"]
    assert defined[-1][1:3] == [2, TICKERS[1]]


def test_a_watched_market_forgotten_after_a_quiet_day_leaves_the_watchlist_and_comes_back() -> None:
    """A watched market quiet for a day is forgotten: the client's `W` drops it (its frames
    keep building: a stale id would fail the whole group's frame), the ticker stays on the
    watchlist, and when it trades again it is watched under its new id."""
    h = Harness()
    h.trade(TICKERS[0], 5000, 100, "yes")
    client = h.hub.connect(
        channels=v2.DEFAULT_CHANNELS, detail=None, resume=None, now_ms=h.now, watch=(TICKERS[0],)
    )
    h.views[client] = ViewState(tape_limit=200)
    h.frames[client] = []
    h.read_until_idle(client)
    assert client.session._watched == (0,)
    h.advance(2 * 24 * 3_600_000)
    h.trade(TICKERS[1], 5100, 100, "no")
    h.read_until_idle(client)
    assert h.agg.market_id(TICKERS[0]) is None
    assert client.session._watched == ()
    h.trade(TICKERS[0], 5200, 100, "yes")
    h.read_until_idle(client)
    new_id = h.agg.market_id(TICKERS[0])
    assert new_id is not None and new_id != 0 and client.session._watched == (new_id,)
    watch_events = [e for f in h.frames[client] for e in events_of(f) if e[0] == "W"]
    assert watch_events[-2:] == [["W"], ["W", new_id]]
    actual = h.views[client].summary()
    actual.pop("seq")
    assert actual == expected_summary(
        h.agg, channels=client.session.channels, detail=None, tape_len=200, detail_len=50, watch=(TICKERS[0],)
    )


def test_subscribe_and_unsubscribe_change_the_stream_from_the_next_frame() -> None:
    """`sub` sends the new channel's state; `unsub` stops it; the view stays exact."""
    h = Harness()
    client = h.connect(frozenset({"hour"}))
    h.trade(TICKERS[0], 5000, 100, "yes")
    h.read_until_idle(client)
    client.session.subscribe(frozenset({"trades", "top"}))
    frame = h.read(client)
    assert frame is not None and {"C", "x", "T"} <= set(codes(frame))
    h.trade(TICKERS[1], 5000, 100, "yes")
    h.read_until_idle(client)
    h.check(client)
    client.session.unsubscribe(frozenset({"trades"}))
    h.trade(TICKERS[1], 5000, 100, "yes")
    h.advance(3_000)
    h.read_until_idle(client)
    h.check(client)


def test_resume_sends_only_what_was_missed() -> None:
    """A client that reconnects with EPOCH:SEQ still in the ring continues without a snapshot."""
    h = Harness()
    first = h.connect()
    for i in range(5):
        h.trade(TICKERS[i % 3], 5000, 100, "yes")
    h.read_until_idle(first)
    view = h.views[first]
    h.hub.disconnect(first)
    for i in range(5):
        h.trade(TICKERS[i % 4], 5100, 100, "no")
        h.advance(1_000)
    second = h.connect(resume=(view.epoch, view.seq), view=view)
    frame = h.read(second)
    assert frame is not None
    events = events_of(frame)
    assert events[0][0] == "H" and events[0][1]["resumed"] is True
    assert "T" not in codes(frame) and "a" not in codes(frame)
    h.read_until_idle(second)
    h.check(second)


def test_resume_from_an_unknown_epoch_or_trimmed_seq_gets_a_snapshot() -> None:
    """Resume falls back to a fresh snapshot when the history is gone."""
    h = Harness()
    client = h.connect(resume=("other-epoch", 1))
    frame = h.read(client)
    assert frame is not None and events_of(frame)[0][1]["resumed"] is False
    late = h.connect(resume=("e1", h.hub.seq + 50))
    frame = h.read(late)
    assert frame is not None and events_of(frame)[0][1]["resumed"] is False


CHANNEL_SETS = [
    v2.DEFAULT_CHANNELS,
    frozenset({"hot", "hour", "day"}),
    frozenset({"top", "today", "trades"}),
    frozenset({"hot", "today", "top"}),
]

trade_operation = st.tuples(
    st.just("trade"),
    st.integers(0, len(TICKERS) - 1),
    st.integers(1, 9999),
    st.integers(1, 50_000),
    st.sampled_from(["yes", "no"]),
    st.sampled_from([0, 0, 0, 0, 1_500, 25_000]),
)
operation = st.one_of(
    trade_operation,
    trade_operation,
    st.tuples(
        st.just("trade"),
        st.integers(0, len(TICKERS) - 1),
        st.integers(1, 9999),
        st.integers(1, 50_000),
        st.sampled_from(["yes", "no"]),
        st.sampled_from([0, 0, 0, 0, 1_500, 25_000]),
    ),
    st.tuples(
        st.just("advance"),
        st.sampled_from([1, 400, 999, 999, 5_000, 5_000, 19_999, 20_000, 61_000, 3_600_000]),
    ),
    st.tuples(st.just("read"), st.integers(0, len(CHANNEL_SETS))),
    st.tuples(st.just("detail"), st.integers(0, len(TICKERS))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=3, max_size=60), max_pending=st.sampled_from([3, 2_000]))
def test_any_trades_and_read_pattern_fold_to_the_servers_state(
    ops: list[tuple[Any, ...]], max_pending: int
) -> None:
    """Property: for random trades (some late), clock moves and read patterns, every client's
    decoded view equals the server's state once it has read everything."""
    h = Harness(SessionLimits(max_pending_trades=max_pending, snapshot_tape=200, max_resyncs=1_000))
    for ticker in TICKERS[:4]:
        h.hub.publish(h.agg.set_meta(MarketMeta(ticker, title=f"Title {ticker}", category="Test")), h.now)
    clients = [h.connect(channels) for channels in CHANNEL_SETS]
    detail_client = h.connect(frozenset({"today"}), detail=TICKERS[0])
    clients.append(detail_client)
    for client in clients:
        h.read(client)
    for op in ops:
        if op[0] == "trade":
            _, index, price, count, side, lateness = op
            h.trade(TICKERS[index], price, count, side, lateness)
        elif op[0] == "advance":
            h.advance(op[1])
        elif op[0] == "read":
            h.read(clients[op[1]])
        else:
            index = op[1]
            detail_client.session.set_detail(TICKERS[index] if index < len(TICKERS) else None)
    for client in clients:
        h.read_until_idle(client)
        h.check(client)


class FakeSink:
    """A client's connection as the publisher sees it: frames it delivers reach the client's
    view in order; one taken only in part (``stall``) leaves bytes queued until the client
    reads, and the connection is not ready meanwhile."""

    def __init__(self, harness: Harness, client: Client) -> None:
        self.harness = harness
        self.client = client
        self.queued = False
        self.take_next_in_part = False

    def ready(self) -> bool:
        return not self.queued

    def deliver(self, frames: GroupFrames) -> bool:
        assert not self.queued, "the publisher wrote to a connection with bytes queued"
        frame = frames.payload
        self.harness.frames[self.client].append(frame)
        self.harness.views[self.client].apply_frame(frame)
        if self.take_next_in_part:
            self.take_next_in_part = False
            self.queued = True
            return False
        return True

    def write_pending(self, now_ms: int) -> bool:
        return False  # its frames of its own are read by the harness (the loop's part)

    def left_group(self) -> None:
        pass


GROUPED_CHANNEL_SETS = [
    v2.DEFAULT_CHANNELS,
    v2.DEFAULT_CHANNELS,
    v2.DEFAULT_CHANNELS,
    frozenset({"top", "today", "trades"}),
    frozenset({"top", "today", "trades"}),
    frozenset({"hot", "top"}),
    frozenset({"hot", "top"}),
    frozenset({"hot", "hour", "day"}),
]

group_operation = st.one_of(
    operation,
    st.tuples(st.just("join"), st.integers(0, len(GROUPED_CHANNEL_SETS) - 1)),
    st.tuples(st.just("stall"), st.integers(0, len(GROUPED_CHANNEL_SETS) - 1)),
    st.tuples(
        st.just("toggle"), st.integers(0, len(GROUPED_CHANNEL_SETS) - 1), st.sampled_from(["top", "hot"])
    ),
    st.tuples(st.just("reconnect"), st.integers(0, len(GROUPED_CHANNEL_SETS) - 1)),
)


def read_with_sink(h: Harness, client: Client) -> None:
    """The client reads: what was queued for it arrives; on its own it gets a frame."""
    sink = client.sink
    assert isinstance(sink, FakeSink)
    sink.queued = False
    if client.group is None:
        h.read(client)


def test_a_group_whose_frame_fails_to_build_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: should building one group's frame raise (a bug), the publish goes on
    for every other group, and the failing group's members go on alone (their own loops meet
    the error), instead of the exception leaving the hub's publish."""
    h = Harness()
    broken, healthy = h.connect(frozenset({"trades", "hot"})), h.connect(frozenset({"trades", "top"}))
    for client in (broken, healthy):
        client.sink = FakeSink(h, client)
        h.read(client)
        assert h.hub.try_join(client) or client.group is not None
    assert broken.group is not None and broken.group is not healthy.group

    def fail(*_: object) -> None:
        raise RuntimeError("a bug in building a frame")

    monkeypatch.setattr(broken.group.session, "build_frame", fail)
    frames_before = len(h.frames[healthy])
    h.trade(TICKERS[0], 5000, 100, "yes")
    assert broken.group is None
    assert len(h.frames[healthy]) == frames_before + 1
    h.check(healthy)


def test_a_newcomer_in_an_old_group_gets_market_ids_it_never_saw_defined() -> None:
    """A group that has run for a while knows ids a newcomer was never sent: when such a market
    comes back, the group defines it again (``m``) for everyone, and the newcomer's view holds it."""
    h = Harness()
    veteran = h.connect(frozenset({"hot"}))
    veteran.sink = FakeSink(h, veteran)
    h.read(veteran)
    for index in range(4):  # markets 0..3 each hot for a while; the veteran learns all ids
        h.trade(TICKERS[index], 5000, 1_000_000, "yes")
        h.advance(1_000)
    read_with_sink(h, veteran)
    h.advance(25_000)  # every window expires: the hot set empties
    h.trade(TICKERS[3], 5000, 100, "yes")
    read_with_sink(h, veteran)
    assert h.hub.try_join(veteran) or veteran.group is not None
    newcomer = h.connect(frozenset({"hot"}))
    newcomer.sink = FakeSink(h, newcomer)
    h.read(newcomer)
    assert h.hub.try_join(newcomer) and newcomer.group is veteran.group
    h.trade(TICKERS[0], 5000, 1_000_000, "yes")  # market 0 is hot again
    assert any(event[:2] == ["m", 0] for event in events_of(h.frames[newcomer][-1]))
    for client in (veteran, newcomer):
        h.check(client)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(group_operation, min_size=3, max_size=80), max_pending=st.sampled_from([3, 2_000]))
def test_clients_joining_and_leaving_groups_fold_to_the_servers_state(
    ops: list[tuple[Any, ...]], max_pending: int
) -> None:
    """Property: with caught-up clients joining groups (the publisher builds each frame once and
    delivers it to every member), members leaving when their socket takes a frame in part or
    when they send a command, and random trades, clock moves and read patterns, every client's
    decoded view equals the server's state once it has read everything."""
    h = Harness(SessionLimits(max_pending_trades=max_pending, snapshot_tape=200, max_resyncs=1_000))
    for ticker in TICKERS[:4]:
        h.hub.publish(h.agg.set_meta(MarketMeta(ticker, title=f"Title {ticker}", category="Test")), h.now)
    clients = [h.connect(channels) for channels in GROUPED_CHANNEL_SETS]
    detail_client = h.connect(frozenset({"today"}), detail=TICKERS[0])
    clients.append(detail_client)
    for client in clients:
        client.sink = FakeSink(h, client)
        h.read(client)
    for op in ops:
        if op[0] == "trade":
            _, index, price, count, side, lateness = op
            h.trade(TICKERS[index], price, count, side, lateness)
        elif op[0] == "advance":
            h.advance(op[1])
        elif op[0] == "read":
            read_with_sink(h, clients[op[1]])
        elif op[0] == "join":
            read_with_sink(h, clients[op[1]])
            h.hub.try_join(clients[op[1]])
        elif op[0] == "stall":
            sink = clients[op[1]].sink
            assert isinstance(sink, FakeSink)
            sink.take_next_in_part = True
        elif op[0] == "reconnect":
            # A newcomer knows fewer market ids than a group that has run for a while.
            h.hub.disconnect(clients[op[1]])
            clients[op[1]] = h.connect(GROUPED_CHANNEL_SETS[op[1]])
            clients[op[1]].sink = FakeSink(h, clients[op[1]])
            h.read(clients[op[1]])
        elif op[0] == "toggle":
            session = h.hub.own_session(clients[op[1]])
            channel = frozenset({op[2]})
            if op[2] in session.channels:
                session.unsubscribe(channel)
            else:
                session.subscribe(channel)
        else:
            index = op[1]
            h.hub.own_session(detail_client).set_detail(TICKERS[index] if index < len(TICKERS) else None)
    for client in clients:
        read_with_sink(h, client)
        if client.group is None:
            h.read_until_idle(client)
        h.check(client)


@pytest.mark.parametrize("channels", ["hot,nope", "", "trades,,hour"])
def test_channel_lists_are_validated(channels: str) -> None:
    """Unknown channel names are refused with the list of valid ones."""
    names = channels.split(",")
    if "nope" in names:
        with pytest.raises(ProtocolError, match="expected any of"):
            v2.parse_channels(names)
    else:
        assert v2.parse_channels(names) <= v2.DEFAULT_CHANNELS


def test_minute_clock_event_rolls_the_views() -> None:
    """At a minute boundary the client gets `c` and its hour view moves by one bucket."""
    h = Harness()
    client = h.connect()
    h.trade(TICKERS[0], 5000, 100, "yes")
    h.read_until_idle(client)
    h.advance(MINUTE_MS)
    frame = h.read(client)
    assert frame is not None and "c" in codes(frame)
    h.check(client)


def test_decoder_skips_unknown_events_and_counts_them() -> None:
    """A newer server's event codes are skipped (and counted), the rest of the frame applies."""
    h = Harness()
    client = h.connect()
    h.trade(TICKERS[0], 5000, 100, "yes")
    h.read_until_idle(client)
    view = h.views[client]
    view.apply_frame(orjson.dumps([h.hub.seq, ["Z", 1, 2], ["d", 7, 9]]))
    assert view.unknown_events == {"Z": 1}
    assert view.summary()["today"] == [7, 9]


def test_decoder_accepts_a_restarted_servers_lower_seq_only_with_a_fresh_hello() -> None:
    """seq may start again only in a snapshot (hello not resumed), never in an update."""
    first = Harness()
    client = first.connect()
    for i in range(5):
        first.trade(TICKERS[i % 2], 5000, 100, "yes")
    first.read_until_idle(client)
    view = first.views[client]
    restarted = Harness()
    restarted.trade(TICKERS[3], 5000, 100, "yes")
    assert 0 < restarted.hub.seq < view.seq
    again = restarted.connect(view=view)
    restarted.read(again)
    restarted.check(again)
    with pytest.raises(DecodeError, match="backwards"):
        view.apply_frame(orjson.dumps([view.seq - 1, ["d", 1, 1]]))


# -- parlays, hot events, watchlist ------------------------------------------------------------


def test_a_watched_ticker_is_delivered_once_it_trades_and_tracked_without_the_trades_channel() -> None:
    """A client without `trades` that watches a market not traded yet gets `W` with it at its first
    trade, then its window and sparkline as `w`/`s`; its folded view equals the server's."""
    h = Harness()
    client = h.connect(channels=frozenset({"top"}))
    client.session.watch(("KXLATER-1", "KXA-1"))
    h.trade("KXA-1", 400_000, 100, "yes")
    h.read_until_idle(client)
    assert h.views[client].watched == [h.agg.market_id("KXA-1")]
    for _ in range(3):
        h.trade("KXLATER-1", 410_000, 250, "no")
        h.trade("KXB-1", 999_999, 10_000, "yes")
        h.advance(500)
    h.read_until_idle(client)
    view = h.views[client]
    assert view.watched == [h.agg.market_id("KXLATER-1"), h.agg.market_id("KXA-1")]
    actual = view.summary()
    actual.pop("seq")
    assert actual == expected_summary(
        h.agg,
        channels=client.session.channels,
        detail=None,
        tape_len=200,
        detail_len=50,
        watch=("KXLATER-1", "KXA-1"),
    )
    assert actual["watch"][0]["window"][2] == 3  # its three trades, from `w`


def test_clients_share_frames_only_with_the_same_parlays_option_and_watchlist() -> None:
    """The group signature holds the parlays option and the watchlist: caught-up clients that
    differ in either are never sent the same frames."""
    h = Harness()
    h.trade("KXA-1", 400_000, 100, "yes")
    clients = [h.connect() for _ in range(3)]
    clients[1].session.set_parlays(True)
    clients[2].session.watch(("KXA-1",))
    for client in clients:
        h.read_until_idle(client)
    signatures = [client.session.group_signature() for client in clients]
    assert None not in signatures and len(set(signatures)) == 3
    twin = h.connect()
    h.read_until_idle(twin)
    assert twin.session.group_signature() == signatures[0]

"""Publish: number the aggregator's events, keep a ring of them for resume, fan them out.

``publish`` is synchronous and never waits on a socket, so one slow client cannot delay the
feed or any other client: it offers each event to every client's session, then, for a client
whose send loop is idle, writes the pending frame itself if the socket takes it at once
(``Client.flush``, flowboard.server.direct); otherwise it wakes that client's own send loop
(flowboard.server.websocket), which takes everything pending as one frame.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable

import attrs
import trio

from flowboard.aggregate.aggregator import Aggregator
from flowboard.aggregate.events import Event, HotChanged
from flowboard.protocol.session import ClientSession, ResumePoint, SessionLimits


class Wakeup:
    """How a publisher wakes a connection's send loop (v2 clients here, v1 in legacy.py)."""

    def __init__(self) -> None:
        # Set when there may be something to send; replaced after each wait.
        self._wakeup = trio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def wait(self, deadline: float) -> None:
        """Until woken or until ``deadline`` (trio time); then re-arm."""
        if deadline == math.inf:
            # Most waits have no deadline: skip a cancel scope per frame.
            await self._wakeup.wait()
        else:
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
        self._wakeup = trio.Event()


class Client(Wakeup):
    """A connected v2 client: its session and the way to wake its send loop."""

    def __init__(self, session: ClientSession) -> None:
        super().__init__()
        self.session = session
        # While the send loop waits: writes the pending frame without waking it, if it can
        # (returns False when the loop must wake instead). Set by flowboard.server.websocket.
        self.flush: Callable[[int], bool] | None = None


@attrs.frozen
class HubStats:
    seq: int
    clients: int
    ring_events: int
    pending_trades_max: int
    pending_trades_total: int


class Hub:
    """The single publisher: aggregator events in, per-client sessions out."""

    def __init__(self, agg: Aggregator, *, epoch: str, ring_size: int, limits: SessionLimits) -> None:
        self.agg = agg
        self.epoch = epoch
        self.limits = limits
        # Sequence number of the latest event published.
        self.seq = 0
        # The latest events, for clients that resume: (seq, event).
        self._ring: deque[tuple[int, Event]] = deque(maxlen=ring_size)
        # The hot set as of the event just before the ring's oldest (for resume points).
        self._hot_before_ring: tuple[int, ...] = ()
        self.clients: set[Client] = set()
        # Set once shutdown begins: send loops close their sockets with 1001.
        self.shutting_down = trio.Event()
        # Set when, after shutdown began, the last client has gone.
        self.drained = trio.Event()

    def rebase(self) -> None:
        """Start the event history here (after a rebuild or warm start that published nothing)."""
        self._ring.clear()
        self._hot_before_ring = self.agg.hot()

    def restart(self, *, epoch: str, seq: int, now_ms: int) -> None:
        """Go on from another history (an edge that loaded the ingest's snapshot into the
        aggregator): the ring starts here, and every v2 client gets a fresh snapshot."""
        self.epoch = epoch
        self.seq = seq
        self.rebase()
        for client in self.clients:
            if isinstance(client.session, ClientSession):
                client.session.restart(epoch=epoch, seq=seq)
            client.wake()

    def publish(self, events: Iterable[Event], now_ms: int) -> None:
        ring = self._ring
        for event in events:
            self.seq += 1
            if len(ring) == ring.maxlen:
                _, oldest = ring[0]
                if isinstance(oldest, HotChanged):
                    self._hot_before_ring = oldest.markets
            ring.append((self.seq, event))
            for client in self.clients:
                client.session.offer(self.seq, event, now_ms)
        for client in self.clients:
            if client.session.has_pending(now_ms):
                # The shared v1 feed (flowboard.server.legacy) stands in a Client's place with no flush.
                flush = getattr(client, "flush", None)
                if flush is None or not flush(now_ms):
                    client.wake()

    def _resume_point(self, resume: tuple[str, int] | None) -> ResumePoint | None:
        """Where a reconnecting client can continue, or None if it needs a snapshot."""
        if resume is None:
            return None
        epoch, seq = resume
        oldest = self._ring[0][0] if self._ring else self.seq + 1
        if epoch != self.epoch or not oldest - 1 <= seq <= self.seq:
            return None
        hot = self._hot_before_ring
        for event_seq, event in self._ring:
            if event_seq > seq:
                break
            if isinstance(event, HotChanged):
                hot = event.markets
        return ResumePoint(hot=hot)

    def connect(
        self, *, channels: frozenset[str], detail: str | None, resume: tuple[str, int] | None, now_ms: int
    ) -> Client:
        point = self._resume_point(resume)
        start_seq = resume[1] if point is not None and resume is not None else self.seq
        session = ClientSession(
            epoch=self.epoch,
            channels=channels,
            detail=detail,
            limits=self.limits,
            seq=start_seq,
            resume=point,
        )
        if point is not None:
            for event_seq, event in self._ring:
                if event_seq > start_seq:
                    session.offer(event_seq, event, now_ms)
        session.seq = self.seq
        client = Client(session)
        self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)
        if self.shutting_down.is_set() and not self.clients:
            self.drained.set()

    def begin_shutdown(self) -> None:
        """Ask every send loop to close its client with 1001."""
        self.shutting_down.set()
        if not self.clients:
            self.drained.set()
        for client in self.clients:
            client.wake()

    def statistics(self) -> HubStats:
        pending = [client.session.pending_trades for client in self.clients]
        return HubStats(
            seq=self.seq,
            clients=len(self.clients),
            ring_events=len(self._ring),
            pending_trades_max=max(pending, default=0),
            pending_trades_total=sum(pending),
        )

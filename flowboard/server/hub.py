"""Publish: number the aggregator's events, keep a ring of them for resume, fan them out.

``publish`` is synchronous and never waits on a socket, so one slow client cannot delay the
feed or any other client. It offers each event once to each subscriber: every group of v2
clients that share frames, every v2 client on its own, and the shared v1 feed.

Encode once, write many: caught-up v2 clients whose mirrors are identical
(``ClientSession.group_signature``) are members of one :class:`Group`, whose single session
builds each frame once; the publisher hands those bytes to each member's sink. A client starts
on its own (snapshot, resume, catching up: batched, conflated, resynced as
``docs/protocol.md`` says) and joins a group once it has nothing pending and its socket has
nothing queued. It leaves the group, going on from a copy of the group's session, when its
socket does not take a whole frame at once or when it sends a command.

A client on its own whose send loop is idle gets its frame written by the publisher too, if
the socket takes it at once (``FrameSink.write_pending``); otherwise its own send loop is woken
(flowboard.server.websocket), and takes everything pending as one frame.

Every subscriber, a v2 client on its own or the shared v1 feed, is a :class:`Subscriber`: offered
each event, then asked to send. What else must happen on each publish (the scale-out ingest
cutting its stream entry) is a :class:`PublishListener` passed to the hub, not a subclass.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

import attrs
import trio

from flowboard.aggregate.aggregator import Aggregator
from flowboard.aggregate.events import Event, HotChanged
from flowboard.protocol.session import ClientSession, Frame, ResumePoint, SessionLimits
from flowboard.server.connection import GroupFrames

log = logging.getLogger(__name__)


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


class Subscriber(Protocol):
    """What the hub publishes to: a v2 client on its own, or the shared v1 feed."""

    def offer(self, seq: int, event: Event, now_ms: int) -> None:
        """One event, in sequence order."""

    def send(self, now_ms: int) -> None:
        """Every event of this publish (or coalescing tick) was offered: send what is pending,
        without waiting on a socket."""


class PublishListener(Protocol):
    """Extends publishing (the scale-out ingest journals each publish as one stream entry)."""

    def published(self, seq: int, now_ms: int) -> None:
        """After each publish, once its events are numbered (``seq``: the latest one's)."""

    def rebased(self) -> None:
        """The event history starts again here (after a rebuild or a warm start)."""


class FrameSink(Protocol):
    """Where a v2 client's frames go when the publisher writes them (its connection)."""

    def ready(self) -> bool:
        """Whether a frame written now would start on the socket at once (nothing queued,
        the connection open for data)."""

    def deliver(self, frames: GroupFrames) -> bool:
        """Write the group's current frame; False when the socket did not take all of it (the
        rest waits, queued in order) or when the connection can no longer be sent data."""

    def write_pending(self, now_ms: int) -> bool:
        """Write the client's own pending frame now, if its send loop is idle and the socket
        takes it whole; False when the loop must be woken instead."""

    def left_group(self) -> None:
        """It will be sent frames of its own again (its own compressor, if any)."""


class Client(Wakeup):
    """A connected v2 client: its session (or its group's) and the way to wake its send loop."""

    def __init__(self, session: ClientSession) -> None:
        super().__init__()
        # Its own session, or while a member of a group, the group's (shared: never mutate).
        self.session = session
        # The group whose frames it receives, if any.
        self.group: Group | None = None
        # Its connection, when the publisher may write to it (else its loop sends everything,
        # and it never joins a group).
        self.sink: FrameSink | None = None

    # -- Subscriber, while on its own ----------------------------------------------------------

    def offer(self, seq: int, event: Event, now_ms: int) -> None:
        self.session.offer(seq, event, now_ms)

    def send(self, now_ms: int) -> None:
        if self.session.has_pending(now_ms) and (self.sink is None or not self.sink.write_pending(now_ms)):
            self.wake()


class Group:
    """Clients sent the same frames: one session, built once per publish."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        # Each member, with its connection's deliver (looked up once, at joining).
        self.members: dict[Client, Callable[[GroupFrames], bool]] = {}
        # Its payloads as wire frames, built once per deflate variant.
        self.frames = GroupFrames()


#: Counts a frame the publisher built once and handed to ``receivers`` clients.
FrameCounter = Callable[[Frame, int], None]


@attrs.frozen
class HubStats:
    seq: int
    clients: int
    groups: int
    grouped_clients: int
    ring_events: int
    pending_trades_max: int
    pending_trades_total: int


class Hub:
    """The single publisher: aggregator events in, v2 sessions (grouped or not) and feeds out."""

    def __init__(
        self,
        agg: Aggregator,
        *,
        epoch: str,
        ring_size: int,
        limits: SessionLimits,
        listener: PublishListener | None = None,
    ) -> None:
        self.agg = agg
        self.epoch = epoch
        self.limits = limits
        # Sequence number of the latest event published.
        self.seq = 0
        # The latest events, for clients that resume: (seq, event).
        self._ring: deque[tuple[int, Event]] = deque(maxlen=ring_size)
        # The hot sets (without, with parlays) as of the event just before the ring's oldest
        # (for resume points).
        self._hot_before_ring: dict[bool, tuple[int, ...]] = {False: (), True: ()}
        # Every connected v2 client, on its own or in a group.
        self.clients: set[Client] = set()
        # v2 clients with a session of their own.
        self._alone: set[Client] = set()
        self._groups: set[Group] = set()
        # Subscribers that are not v2 clients (the v1 feed, while it has connections).
        self.feeds: set[Subscriber] = set()
        # Told of each publish (None: nothing extends publishing).
        self.listener = listener
        # Seconds between sends while the loop is behind (flowboard.server.coalesce); 0 while
        # it keeps up: each publish sends at once.
        self.coalesce_interval_s = 0.0
        # Whether events were offered since the last send.
        self.unsent = False
        # Seconds spent publishing and sending (for the coalescing decision), on ``busy_clock``
        # (the server sets trio's, so that a test's mock clock keeps decisions deterministic).
        self.busy_s = 0.0
        # The longest single publish or send since the coalescer last looked: a timer that
        # waited for one of ours was late because of our own pass, not because we are behind.
        self.longest_pass_s = 0.0
        self.busy_clock: Callable[[], float] = time.perf_counter
        # Called for every frame a group sent (metrics); set by the server.
        self.count_group_frame: FrameCounter = lambda frame, receivers: None
        # Set once shutdown begins: send loops close their sockets with 1001.
        self.shutting_down = trio.Event()
        # Set when, after shutdown began, the last client has gone.
        self.drained = trio.Event()

    def rebase(self) -> None:
        """Start the event history here (after a rebuild or warm start that published nothing)."""
        self._ring.clear()
        self._hot_before_ring = {parlays: self.agg.hot(parlays) for parlays in (False, True)}
        if self.listener is not None:
            self.listener.rebased()

    def restart(self, *, epoch: str, seq: int, now_ms: int) -> None:
        """Go on from another history (an edge that loaded the ingest's snapshot into the
        aggregator): the ring starts here, and every v2 client gets a fresh snapshot."""
        self.epoch = epoch
        self.seq = seq
        self.rebase()
        for group in list(self._groups):
            for member in list(group.members):
                self._leave(member)
        for client in self.clients:
            client.session.restart(epoch=epoch, seq=seq)
            client.wake()

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(self, feed: Subscriber) -> None:
        """Publish to ``feed`` too (v2 clients come in through :meth:`connect`)."""
        self.feeds.add(feed)

    def unsubscribe(self, feed: Subscriber) -> None:
        self.feeds.discard(feed)

    def publish(self, events: Iterable[Event], now_ms: int) -> None:
        """Offer ``events`` to every subscriber; send at once unless coalescing."""
        started = self.busy_clock()
        self._offer(events, now_ms)
        if self.coalesce_interval_s:
            self.unsent = True
        else:
            self._send(now_ms)
        if self.listener is not None:
            self.listener.published(self.seq, now_ms)
        self._account_pass(self.busy_clock() - started)

    def send(self, now_ms: int) -> None:
        """The coalescing tick: send what was offered since the last send."""
        if self.unsent:
            started = self.busy_clock()
            self._send(now_ms)
            self._account_pass(self.busy_clock() - started)

    def _account_pass(self, elapsed_s: float) -> None:
        self.busy_s += elapsed_s
        if elapsed_s > self.longest_pass_s:
            self.longest_pass_s = elapsed_s

    def _offer(self, events: Iterable[Event], now_ms: int) -> None:
        ring = self._ring
        sessions = [group.session for group in self._groups]
        subscribers: list[Subscriber] = [*self._alone, *self.feeds]
        for event in events:
            self.seq += 1
            if len(ring) == ring.maxlen:
                _, oldest = ring[0]
                if isinstance(oldest, HotChanged):
                    self._hot_before_ring[oldest.parlays] = oldest.markets
            ring.append((self.seq, event))
            for session in sessions:
                session.offer(self.seq, event, now_ms)
            for subscriber in subscribers:
                subscriber.offer(self.seq, event, now_ms)

    def _send(self, now_ms: int) -> None:
        self.unsent = False
        for group in list(self._groups):
            if group.session.has_pending(now_ms):
                self._send_group_frame(group, now_ms)
        self._merge_twin_groups()
        for client in list(self._alone):
            client.send(now_ms)
            self.try_join(client)
        for feed in self.feeds:
            feed.send(now_ms)

    def _send_group_frame(self, group: Group, now_ms: int) -> None:
        if self.shutting_down.is_set() or group.session.close_reason is not None:
            # Every member must be closed by its own loop (its fork carries the reason).
            for member in list(group.members):
                self._leave(member)
                member.wake()
            return
        try:
            frame = group.session.build_frame(self.agg, now_ms)
        except Exception:
            # A bug met building one group's frame must not stop the publish for every other
            # client: the members go on alone, and each one's own loop meets the error and
            # closes that connection with it.
            members = len(group.members)
            log.exception("hub: a group's frame failed to build; its %d members go on alone", members)
            for member in list(group.members):
                self._leave(member)
                member.wake()
            return
        if frame is None:
            return
        self.count_group_frame(frame, len(group.members))
        frames = group.frames
        frames.next(frame.payload)
        # The hot loop: one write per member. A member whose socket did not take the whole
        # frame (the rest is queued, in order), or that can no longer be sent data, goes on
        # alone from the group's state after this frame.
        behind = [member for member, deliver in group.members.items() if not deliver(frames)]
        for member in behind:
            self._leave(member)
            member.wake()

    # -- groups --------------------------------------------------------------------------------

    def try_join(self, client: Client) -> bool:
        """Put a caught-up client on its own into the group whose mirror equals its own (or
        found one); False when it cannot share frames now."""
        sink = client.sink
        if client.group is not None or sink is None or not sink.ready():
            return False
        session = client.session
        signature = session.group_signature()
        if signature is None:
            return False
        for group in self._groups:
            if group.session.group_signature() == signature:
                group.session.forget_ids_unknown_to(session)
                break
        else:
            group = Group(session.fork())
            self._groups.add(group)
        self._alone.discard(client)
        group.members[client] = sink.deliver
        client.group = group
        client.session = group.session
        return True

    def _merge_twin_groups(self) -> None:
        """Groups founded apart whose mirrors have become the same are made one (their
        members leave, and join the first at once)."""
        if len(self._groups) < 2:
            return
        first_with: dict[tuple[object, ...], Group] = {}
        for group in list(self._groups):
            signature = group.session.group_signature()
            if signature is None:
                continue
            if signature not in first_with:
                first_with[signature] = group
                continue
            for member in list(group.members):
                self._leave(member)
                self.try_join(member)

    def _leave(self, client: Client) -> None:
        group = client.group
        if group is None:
            return
        del group.members[client]
        if not group.members:
            self._groups.discard(group)
        client.group = None
        client.session = group.session.fork()
        self._alone.add(client)
        if client.sink is not None:
            client.sink.left_group()

    def own_session(self, client: Client) -> ClientSession:
        """The client's own session, taking it out of its group first (before a command)."""
        self._leave(client)
        return client.session

    # -- connections ---------------------------------------------------------------------------

    def _resume_point(self, resume: tuple[str, int] | None, parlays: bool) -> ResumePoint | None:
        """Where a reconnecting client can continue, or None if it needs a snapshot."""
        if resume is None:
            return None
        epoch, seq = resume
        oldest = self._ring[0][0] if self._ring else self.seq + 1
        if epoch != self.epoch or not oldest - 1 <= seq <= self.seq:
            return None
        hot = self._hot_before_ring[parlays]
        for event_seq, event in self._ring:
            if event_seq > seq:
                break
            if isinstance(event, HotChanged) and event.parlays == parlays:
                hot = event.markets
        return ResumePoint(hot=hot)

    def connect(
        self,
        *,
        channels: frozenset[str],
        detail: str | None,
        resume: tuple[str, int] | None,
        now_ms: int,
        parlays: bool = False,
        watch: tuple[str, ...] = (),
    ) -> Client:
        point = self._resume_point(resume, parlays)
        start_seq = resume[1] if point is not None and resume is not None else self.seq
        session = ClientSession(
            epoch=self.epoch,
            channels=channels,
            detail=detail,
            limits=self.limits,
            seq=start_seq,
            resume=point,
            parlays=parlays,
            watch=watch,
        )
        if point is not None:
            for event_seq, event in self._ring:
                if event_seq > start_seq:
                    session.offer(event_seq, event, now_ms)
        session.seq = self.seq
        client = Client(session)
        self.clients.add(client)
        self._alone.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        group = client.group
        if group is not None:
            # Gone: no copy of the group's session, no compressor of its own.
            del group.members[client]
            if not group.members:
                self._groups.discard(group)
            client.group = None
        self._alone.discard(client)
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
        pending = [client.session.pending_trades for client in self._alone]
        pending.extend(group.session.pending_trades for group in self._groups)
        return HubStats(
            seq=self.seq,
            clients=len(self.clients),
            groups=len(self._groups),
            grouped_clients=len(self.clients) - len(self._alone),
            ring_events=len(self._ring),
            pending_trades_max=max(pending, default=0),
            pending_trades_total=sum(pending),
        )

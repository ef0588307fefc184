"""Leave: the per-client send loop and command reader for protocol v2 on ``/ws``.

Each connection runs its own loop: wait until its session has something, build one frame
with everything pending, send it, repeat. While a send waits for a slow socket, new events
pile up in the session (batched and conflated), never in a buffer of encoded frames, so a
slow client costs bounded memory and no one else's time.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import attrs
import trio
from prometheus_client import Counter
from quart import websocket

from flowboard.errors import ProtocolError
from flowboard.protocol import v2
from flowboard.protocol.session import FRAME_KINDS, Frame
from flowboard.server import connection, guards
from flowboard.server.hub import Client, FrameCounter
from flowboard.server.metrics import Metrics
from flowboard.server.runtime import Runtime


def parse_resume(text: str | None) -> tuple[str, int] | None:
    """``EPOCH:SEQ`` from the query string."""
    if not text:
        return None
    epoch, sep, seq = text.rpartition(":")
    # ASCII digits only ("²".isdigit() is true, int() refuses it), and no more than a 64-bit seq.
    if not sep or not epoch or not (seq.isascii() and seq.isdigit()) or len(seq) > 19:
        raise ProtocolError(f"resume must be EPOCH:SEQ, got {text[:60]!r}")
    return epoch, int(seq)


def parse_flag(name: str, text: str | None) -> bool:
    """``1`` or ``0`` (absent: 0) from the query string."""
    if text is None or text == "0":
        return False
    if text == "1":
        return True
    raise ProtocolError(f"{name} must be 0 or 1, got {text[:20]!r}")


@attrs.frozen
class _FrameCounters:
    """The labelled v2 counters, looked up once per process (not per connection)."""

    frames: dict[str, Counter]
    bytes: dict[str, Counter]


_counters: weakref.WeakKeyDictionary[Metrics, _FrameCounters] = weakref.WeakKeyDictionary()


def _frame_counters(metrics: Metrics) -> _FrameCounters:
    counters = _counters.get(metrics)
    if counters is None:
        counters = _counters[metrics] = _FrameCounters(
            frames={kind: metrics.frames_sent.labels("v2", kind) for kind in FRAME_KINDS},
            bytes={kind: metrics.bytes_sent.labels("v2", kind) for kind in FRAME_KINDS},
        )
    return counters


def group_frame_counter(metrics: Metrics) -> FrameCounter:
    """Counts a group's frame once for all its receivers."""
    counters = _frame_counters(metrics)
    frames_sent, bytes_sent = counters.frames, counters.bytes

    def count(frame: Frame, receivers: int) -> None:
        frames_sent[frame.kind].inc(receivers)
        bytes_sent[frame.kind].inc(len(frame.payload) * receivers)

    return count


async def serve_v2(runtime: Runtime) -> None:
    """The ``/ws`` handler."""
    args = websocket.args
    try:
        channels = v2.parse_channels(args["ch"].split(",")) if "ch" in args else v2.DEFAULT_CHANNELS
        detail = args.get("detail") or None
        resume = parse_resume(args.get("resume"))
        parlays = parse_flag("parlays", args.get("parlays"))
        watch = v2.parse_watch(args["watch"].split(",")) if args.get("watch") else ()
    except ProtocolError as exc:
        await websocket.accept()
        await websocket.close(guards.CLOSE_POLICY, str(exc)[:120])
        return
    await websocket.accept()
    wire = await connection.attach(websocket.scope, stall_timeout=runtime.config.delivery.stall_timeout_s)
    hub = runtime.hub
    client = hub.connect(
        channels=channels,
        detail=detail,
        resume=resume,
        now_ms=runtime.wall_ms(),
        parlays=parlays,
        watch=watch,
    )
    runtime.metrics.connections.labels("v2").inc()
    if client.session.is_resume:
        runtime.metrics.resumed.inc()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_commands, runtime, client)
            await _Sender(runtime, client, wire).run()
            nursery.cancel_scope.cancel()
    finally:
        hub.disconnect(client)


def _undeliverable(frames: connection.GroupFrames) -> bool:
    return False


class _Sender:
    """One client's send loop, and its connection's face to the publisher (a FrameSink).

    With the connection's writer the publisher writes most frames itself: a group's frames to
    each member (:meth:`deliver`) and, while the loop waits, a lone client's pending frame
    (:meth:`write_pending`), which spares a task wake-up per frame. The loop does everything
    that can wait: draining what the socket did not take, frames of a client on its own, closes.
    Without the writer (not a plain hypercorn connection) frames go through quart."""

    def __init__(self, runtime: Runtime, client: Client, wire: connection.Connection | None) -> None:
        self.runtime = runtime
        self.client = client
        self.wire = wire
        metrics = runtime.metrics
        self.metrics = metrics
        counters = _frame_counters(metrics)
        self.frames_sent = counters.frames
        self.bytes_sent = counters.bytes
        # Which session's counters were last reported (its id: a member's old session must
        # not be kept alive), and their values then.
        self.reported_session = id(client.session)
        self.reported = client.session.statistics()
        # What went wrong in write_pending, raised here in the loop (a client's error stays its own).
        self.error: Exception | None = None
        # While the loop waits with nothing to send: the publisher may write its frames.
        self.idle = False
        # FrameSink.deliver: the connection's own, called by the publisher for each member of
        # a group (no hop through here; ``error`` is only ever set while the client is alone).
        self.deliver: Callable[[connection.GroupFrames], bool] = _undeliverable
        if wire is not None:
            self.deliver = wire.send_group_frame_nowait
            client.sink = self

    def _account(self, frame: Frame) -> None:
        self.frames_sent[frame.kind].inc()
        self.bytes_sent[frame.kind].inc(len(frame.payload))
        session = self.client.session
        if id(session) != self.reported_session:
            self.reported_session = id(session)
            self.reported = session.statistics()
            return
        stats = session.statistics()
        reported = self.reported
        # Each inc takes a lock: only when something changed (for a caught-up client, rarely).
        if (
            stats.batched_frames != reported.batched_frames
            or stats.conflated != reported.conflated
            or stats.resyncs != reported.resyncs
        ):
            self.metrics.batched_frames.inc(stats.batched_frames - reported.batched_frames)
            self.metrics.conflated.inc(stats.conflated - reported.conflated)
            self.metrics.resyncs.inc(stats.resyncs - reported.resyncs)
            self.reported = stats

    # -- the publisher's side --------------------------------------------------------------

    def ready(self) -> bool:
        wire = self.wire
        return (
            wire is not None
            and not wire.backlog
            and self.error is None
            and not self.runtime.hub.shutting_down.is_set()
            and self.client.session.close_reason is None
            and wire.can_send()
        )

    def left_group(self) -> None:
        if self.wire is not None:
            self.wire.encoder.left_group()

    def write_pending(self, now_ms: int) -> bool:
        if not self.idle or not self.ready():
            return False
        assert self.wire is not None
        session = self.client.session
        try:
            frame = session.build_frame(self.runtime.agg, now_ms)
            if frame is None:
                return False
            written = self.wire.send_text_nowait(frame.payload)
            self._account(frame)
        except Exception as exc:  # re-raised by this client's own loop
            self.error = exc
            return False
        return written

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        runtime = self.runtime
        client = self.client
        hub = runtime.hub
        wire = self.wire
        stall_timeout = runtime.config.delivery.stall_timeout_s
        while True:
            if self.error is not None:
                raise self.error
            if wire is not None and wire.backlog and not await wire.flush():
                self.metrics.closed_slow.inc()
                guards.client_log.info(
                    "aborted a stalled client: a frame waited %.0f s for its socket", stall_timeout
                )
                return
            # client.session is read afresh each time (never held across a wait): it changes
            # when the client joins or leaves a group, and a member's old session must go.
            if hub.shutting_down.is_set():
                await websocket.close(v2.CLOSE_GOING_AWAY, "server shutting down")
                return
            close_reason = client.session.close_reason
            if close_reason is not None:
                self.metrics.closed_slow.inc()
                guards.client_log.info("closing a slow client: %s", close_reason)
                await websocket.close(v2.CLOSE_TOO_SLOW, close_reason[:120])
                return
            if wire is not None and not wire.can_send():
                return  # the client closed (hypercorn answers it) or the socket failed
            if client.group is not None:
                # The publisher writes the group's frames; it wakes us if we must go on alone.
                await client.wait(math.inf)
                continue
            now_ms = runtime.wall_ms()
            frame = client.session.build_frame(runtime.agg, now_ms)
            if frame is None:
                # Caught up: the publisher's next send may put it in a group (Hub.try_join).
                deadline_ms = client.session.next_deadline()
                if deadline_ms is None:
                    deadline = math.inf
                else:
                    deadline = trio.current_time() + max(0, deadline_ms - now_ms) / 1000
                self.idle = True
                try:
                    await client.wait(deadline)
                finally:
                    self.idle = False
                continue
            if wire is not None:
                # What the socket does not take now is drained at the top of the loop.
                wire.send_text_nowait(frame.payload)
                self._account(frame)
                continue
            started = trio.current_time()
            await websocket.send(frame.payload.decode())
            self._account(frame)
            waited = trio.current_time() - started
            if waited > stall_timeout and client.session.close_reason is None:
                client.session.close_reason = f"too slow: a frame waited {waited:.0f} s for the socket"


async def _read_commands(runtime: Runtime, client: Client) -> None:
    hub = runtime.hub
    limit = guards.CommandLimit(runtime.config.server)
    while True:
        text = await websocket.receive()
        if not limit.admit():
            await guards.close_flooding_v2(runtime, hub.own_session(client), client.wake)
            return
        # A command changes what this client is sent: it goes on alone (hub.own_session).
        try:
            command = v2.parse_command(text)
        except ProtocolError as exc:
            runtime.metrics.bad_commands.inc()
            guards.client_log.info("a client sent a bad command: %s", exc)
            hub.own_session(client).report_error(str(exc))
        else:
            session = hub.own_session(client)
            if isinstance(command, v2.Subscribe):
                session.subscribe(command.channels)
            elif isinstance(command, v2.Unsubscribe):
                session.unsubscribe(command.channels)
            elif isinstance(command, v2.Watch):
                session.watch(command.tickers)
            elif isinstance(command, v2.Parlays):
                session.set_parlays(command.on)
            else:
                session.set_detail(command.ticker)
        client.wake()

"""Leave: the per-client send loop and command reader for protocol v2 on ``/ws``.

Each connection runs its own loop: wait until its session has something, build one frame
with everything pending, send it, repeat. While a send waits for a slow socket, new events
pile up in the session (batched and conflated), never in a buffer of encoded frames, so a
slow client costs bounded memory and no one else's time.
"""

from __future__ import annotations

import logging
import math

import trio
from quart import websocket

from flowboard.errors import ProtocolError
from flowboard.protocol import v2
from flowboard.protocol.session import ClientSession
from flowboard.server import direct, guards
from flowboard.server.hub import Client
from flowboard.server.runtime import Runtime

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


def parse_resume(text: str | None) -> tuple[str, int] | None:
    """``EPOCH:SEQ`` from the query string."""
    if not text:
        return None
    epoch, sep, seq = text.rpartition(":")
    # ASCII digits only ("²".isdigit() is true, int() refuses it), and no more than a 64-bit seq.
    if not sep or not epoch or not (seq.isascii() and seq.isdigit()) or len(seq) > 19:
        raise ProtocolError(f"resume must be EPOCH:SEQ, got {text[:60]!r}")
    return epoch, int(seq)


FRAME_KINDS = ("snapshot", "trades", "state")


def frame_kind(frame: bytes) -> str:
    """For metrics: snapshot frames, trade frames, and the rest (state updates)."""
    head = frame[:60]
    if b'["H",' in head and b'"resumed":false' in frame[:400]:
        return "snapshot"
    return "trades" if b'["t",' in frame else "state"


async def serve_v2(runtime: Runtime) -> None:
    """The ``/ws`` handler."""
    args = websocket.args
    try:
        channels = v2.parse_channels(args["ch"].split(",")) if "ch" in args else v2.DEFAULT_CHANNELS
        detail = args.get("detail") or None
        resume = parse_resume(args.get("resume"))
    except ProtocolError as exc:
        await websocket.accept()
        await websocket.close(CLOSE_POLICY, str(exc)[:120])
        return
    await websocket.accept()
    hub = runtime.hub
    client = hub.connect(channels=channels, detail=detail, resume=resume, now_ms=runtime.wall_ms())
    runtime.metrics.connections.labels("v2").inc()
    if client.session.is_resume:
        runtime.metrics.resumed.inc()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_commands, runtime, client)
            await _send_frames(runtime, client, direct.writer_for(websocket.scope))
            nursery.cancel_scope.cancel()
    finally:
        hub.disconnect(client)


async def _send_frames(runtime: Runtime, client: Client, writer: direct.DirectWriter | None) -> None:
    await _Sender(runtime, client, writer).run()


class _Sender:
    """One client's send loop. With a direct writer, while the loop waits, the publisher may
    write a frame itself (:meth:`flush_nowait`), which spares a task wake-up per frame; the loop
    still does everything that can wait: the rest of a frame the socket did not take, closes."""

    def __init__(self, runtime: Runtime, client: Client, writer: direct.DirectWriter | None) -> None:
        self.runtime = runtime
        self.client = client
        self.session: ClientSession = client.session
        self.writer = writer
        metrics = runtime.metrics
        self.metrics = metrics
        self.frames_sent = {kind: metrics.frames_sent.labels("v2", kind) for kind in FRAME_KINDS}
        self.bytes_sent = {kind: metrics.bytes_sent.labels("v2", kind) for kind in FRAME_KINDS}
        self.reported = self.session.statistics()
        # The unsent end of a frame flush_nowait wrote in part; goes out before anything else.
        self.rest = b""
        # What went wrong in flush_nowait, raised here in the loop (a client's error stays its own).
        self.error: Exception | None = None

    def _account(self, frame: bytes, kind: str) -> None:
        self.frames_sent[kind].inc()
        self.bytes_sent[kind].inc(len(frame))
        stats = self.session.statistics()
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

    def flush_nowait(self, now_ms: int) -> bool:
        """Called by the publisher while the loop waits: write the pending frame now if it can be
        written whole without waiting. False means "wake the loop" (a close, a partial write)."""
        writer = self.writer
        session = self.session
        if (
            writer is None
            or self.rest
            or self.error is not None
            or self.runtime.hub.shutting_down.is_set()
            or session.close_reason is not None
            or not writer.can_write()
        ):
            return False
        try:
            frame = session.build_frame(self.runtime.agg, now_ms)
            if frame is None:
                return False
            self.rest = writer.write_nowait(frame.decode())
            self._account(frame, frame_kind(frame))
        except Exception as exc:  # re-raised by this client's own loop
            self.error = exc
            return False
        return not self.rest

    async def run(self) -> None:
        runtime = self.runtime
        session = self.session
        client = self.client
        writer = self.writer
        stall_timeout = runtime.config.stall_timeout_s
        while True:
            if self.error is not None:
                raise self.error
            if self.rest:
                rest, self.rest = self.rest, b""
                assert writer is not None
                started = trio.current_time()
                await writer.finish(rest)
                self._check_stall(trio.current_time() - started, stall_timeout)
            if runtime.hub.shutting_down.is_set():
                await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
                return
            if session.close_reason is not None:
                self.metrics.closed_slow.inc()
                log.info("closing a slow client: %s", session.close_reason)
                await websocket.close(v2.CLOSE_TOO_SLOW, session.close_reason[:120])
                return
            now_ms = runtime.wall_ms()
            frame = session.build_frame(runtime.agg, now_ms)
            if frame is None:
                deadline_ms = session.next_deadline()
                if deadline_ms is None:
                    deadline = math.inf
                else:
                    deadline = trio.current_time() + max(0, deadline_ms - now_ms) / 1000
                if writer is not None:
                    client.flush = self.flush_nowait
                try:
                    await client.wait(deadline)
                finally:
                    client.flush = None
                continue
            started = trio.current_time()
            if writer is not None and writer.can_write():
                await writer.send(frame.decode())
            else:
                await websocket.send(frame.decode())
            self._account(frame, frame_kind(frame))
            self._check_stall(trio.current_time() - started, stall_timeout)

    def _check_stall(self, waited: float, stall_timeout: float) -> None:
        if waited > stall_timeout and self.session.close_reason is None:
            self.session.close_reason = f"too slow: a frame waited {waited:.0f} s for the socket"


async def _read_commands(runtime: Runtime, client: Client) -> None:
    session = client.session
    limit = guards.CommandLimit(runtime.config)
    while True:
        text = await websocket.receive()
        if not limit.admit():
            await guards.close_flooding_v2(runtime, session, client.wake)
            return
        try:
            command = v2.parse_command(text)
        except ProtocolError as exc:
            runtime.metrics.bad_commands.inc()
            guards.client_log.info("a client sent a bad command: %s", exc)
            session.report_error(str(exc))
        else:
            if isinstance(command, v2.Subscribe):
                session.subscribe(command.channels)
            elif isinstance(command, v2.Unsubscribe):
                session.unsubscribe(command.channels)
            else:
                session.set_detail(command.ticker)
        client.wake()

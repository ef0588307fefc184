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
from flowboard.server import direct
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
    if not sep or not epoch or not seq.isdigit():
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
    session: ClientSession = client.session
    metrics = runtime.metrics
    frames_sent = {kind: metrics.frames_sent.labels("v2", kind) for kind in FRAME_KINDS}
    bytes_sent = {kind: metrics.bytes_sent.labels("v2", kind) for kind in FRAME_KINDS}
    stall_timeout = runtime.config.stall_timeout_s
    reported = session.statistics()
    while True:
        if runtime.hub.shutting_down.is_set():
            await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        if session.close_reason is not None:
            metrics.closed_slow.inc()
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
            await client.wait(deadline)
            continue
        kind = frame_kind(frame)
        started = trio.current_time()
        if writer is not None and writer.can_write():
            await writer.send(frame.decode())
        else:
            await websocket.send(frame.decode())
        waited = trio.current_time() - started
        frames_sent[kind].inc()
        bytes_sent[kind].inc(len(frame))
        stats = session.statistics()
        metrics.batched_frames.inc(stats.batched_frames - reported.batched_frames)
        metrics.conflated.inc(stats.conflated - reported.conflated)
        metrics.resyncs.inc(stats.resyncs - reported.resyncs)
        reported = stats
        if waited > stall_timeout and session.close_reason is None:
            session.close_reason = f"too slow: a frame waited {waited:.0f} s for the socket"


async def _read_commands(runtime: Runtime, client: Client) -> None:
    session = client.session
    while True:
        text = await websocket.receive()
        try:
            command = v2.parse_command(text)
        except ProtocolError as exc:
            runtime.metrics.bad_commands.inc()
            session.report_error(str(exc))
        else:
            if isinstance(command, v2.Subscribe):
                session.subscribe(command.channels)
            elif isinstance(command, v2.Unsubscribe):
                session.unsubscribe(command.channels)
            else:
                session.set_detail(command.ticker)
        client.wake()

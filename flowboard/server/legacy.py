"""Leave, the old way: the v1 compatibility endpoint ``/ws/stream`` (docs/v1.md).

Every v1 client of a process is served from one :class:`V1Feed`. The feed is one of the
hub's subscribers (``Hub.publish`` offers it each event, then asks it to send), so
there is no polling: when trades are published the feed encodes each v1 ``trade`` message
once and appends the same text to every v1 connection's :class:`~flowboard.protocol.v1.OutQueue`.
The timed messages (analytics every second, hot markets every 5 s) are aligned to the wall
clock so that all connections share one encoding per period. Each connection's own send
loop drains its queue; a slow one only grows its own queue (state messages conflate) until
the bound closes it with 4008 and a reason.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import partial

import trio
from quart import websocket

from flowboard.aggregate.aggregator import ANALYTICS_VIEWS
from flowboard.aggregate.events import Event, TradeAdded
from flowboard.errors import ProtocolError
from flowboard.protocol import v1
from flowboard.protocol.v2 import CLOSE_GOING_AWAY, CLOSE_TOO_SLOW
from flowboard.server import guards
from flowboard.server.hub import Wakeup
from flowboard.server.runtime import Runtime

ANALYTICS_EVERY_MS = 1_000
HOT_EVERY_MS = 5_000
PING_EVERY_MS = 30_000


class V1Connection(Wakeup):
    """One v1 client: its queue and the way to wake its send loop."""

    def __init__(self, limits: v1.QueueLimits) -> None:
        super().__init__()
        self.queue = v1.OutQueue(limits)


class V1Feed:
    """Encodes v1 messages once for every v1 connection of a runtime.

    It is one of the hub's feeds only while at least one v1 client is connected, so a server
    without v1 clients pays nothing.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Trades offered since the last publish ended.
        self._trades: list[TradeAdded] = []
        self.connections: set[V1Connection] = set()
        # kind -> (period key, text): the last encoding of each timed message.
        self._cache: dict[str, tuple[object, str]] = {}

    # -- the hub's side --------------------------------------------------------------------

    def offer(self, seq: int, event: Event, now_ms: int) -> None:
        if isinstance(event, TradeAdded):
            self._trades.append(event)

    def send(self, now_ms: int) -> None:
        """After a publish: encode its trades once, queue them for every connection."""
        trades, self._trades = self._trades, []
        if not trades:
            return
        agg = self.runtime.agg
        stats = v1.global_stats(agg)
        for event in trades:
            text = v1.dumps(v1.trade_message(agg, event, stats))
            for connection in self.connections:
                connection.queue.push(v1.TRADE, text)
        for connection in self.connections:
            connection.wake()

    # -- the connections' side -------------------------------------------------------------

    def connect(self, limits: v1.QueueLimits) -> V1Connection:
        if not self.connections:
            self.runtime.hub.subscribe(self)
        connection = V1Connection(limits)
        self.connections.add(connection)
        return connection

    def disconnect(self, connection: V1Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self.runtime.hub.unsubscribe(self)

    def cached(self, kind: str, key: object, build: Callable[[], v1.Message]) -> str:
        """The text of a message that is the same for every client for a given ``key``."""
        held = self._cache.get(kind)
        if held is None or held[0] != key:
            held = (key, v1.dumps(build()))
            self._cache[kind] = held
        return held[1]

    def snapshot(self, now_ms: int) -> str:
        # Keyed by seq: a snapshot built before the latest event would miss a trade.
        key = (self.runtime.hub.seq, now_ms // ANALYTICS_EVERY_MS)
        agg = self.runtime.agg
        return self.cached(v1.SNAPSHOT, key, partial(v1.snapshot_message, agg, now_ms))


_feeds: weakref.WeakKeyDictionary[Runtime, V1Feed] = weakref.WeakKeyDictionary()


def feed_of(runtime: Runtime) -> V1Feed:
    feed = _feeds.get(runtime)
    if feed is None:
        feed = _feeds[runtime] = V1Feed(runtime)
    return feed


def _next_multiple(now_ms: int, step_ms: int) -> int:
    return now_ms - now_ms % step_ms + step_ms


async def serve_v1(runtime: Runtime) -> None:
    """The ``/ws/stream`` handler."""
    await websocket.accept()
    feed = feed_of(runtime)
    connection = feed.connect(v1.QueueLimits())
    runtime.metrics.connections.labels("v1").inc()
    connection.queue.push(v1.SNAPSHOT, feed.snapshot(runtime.wall_ms()))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_requests, runtime, feed, connection)
            await _send_messages(runtime, feed, connection)
            nursery.cancel_scope.cancel()
    finally:
        feed.disconnect(connection)


def _queue_timed(runtime: Runtime, feed: V1Feed, connection: V1Connection, due: dict[str, int]) -> None:
    """Queue the timed messages whose time has come; ``due`` holds each kind's next time."""
    now = runtime.wall_ms()
    agg = runtime.agg
    queue = connection.queue
    if now >= due[v1.ANALYTICS]:
        period = now // ANALYTICS_EVERY_MS
        for mode in ANALYTICS_VIEWS:
            build = partial(v1.analytics_message, agg, mode, now)
            text = feed.cached(f"{v1.ANALYTICS}:{mode}", period, build)
            queue.push(v1.ANALYTICS, text, key=mode)
        due[v1.ANALYTICS] = _next_multiple(now, ANALYTICS_EVERY_MS)
    if now >= due[v1.HOT]:
        text = feed.cached(v1.HOT, now // HOT_EVERY_MS, partial(v1.hot_message, agg))
        queue.push(v1.HOT, text, key=v1.HOT)
        due[v1.HOT] = _next_multiple(now, HOT_EVERY_MS)
    if now >= due[v1.PING]:
        queue.push(v1.PING, v1.dumps(v1.ping_message(now)))
        due[v1.PING] = now + PING_EVERY_MS


async def _send_messages(runtime: Runtime, feed: V1Feed, connection: V1Connection) -> None:
    metrics = runtime.metrics
    stall_timeout = runtime.config.delivery.stall_timeout_s
    queue = connection.queue
    now = runtime.wall_ms()
    due = {
        v1.ANALYTICS: _next_multiple(now, ANALYTICS_EVERY_MS),
        v1.HOT: _next_multiple(now, HOT_EVERY_MS),
        v1.PING: now + PING_EVERY_MS,
    }
    while True:
        if runtime.hub.shutting_down.is_set():
            await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        if queue.close_reason is not None:
            metrics.closed_slow.inc()
            guards.client_log.info("closing a slow v1 client: %s", queue.close_reason)
            await websocket.close(CLOSE_TOO_SLOW, queue.close_reason[:120])
            return
        _queue_timed(runtime, feed, connection, due)
        item = queue.pop()
        if item is None:
            wait_ms = min(due.values()) - runtime.wall_ms()
            await connection.wait(trio.current_time() + max(0, wait_ms) / 1000)
            continue
        kind, text = item
        with trio.move_on_after(stall_timeout):
            await websocket.send(text)
            metrics.frames_sent.labels("v1", kind).inc()
            # json.dumps escapes non-ASCII by default: characters are bytes.
            metrics.bytes_sent.labels("v1", kind).inc(len(text))
            continue
        # The send took longer than stall_timeout. hypercorn shields its socket write, so this
        # only fires once the write has completed (or hypercorn dropped the connection): the
        # stream is intact and the close frame goes after it.
        metrics.closed_slow.inc()
        reason = f"too slow: a message waited {stall_timeout:.0f} s for the socket"
        guards.client_log.info("closing a stalled v1 client: %s", reason)
        with trio.move_on_after(1):
            await websocket.close(CLOSE_TOO_SLOW, reason)
        return


async def _read_requests(runtime: Runtime, feed: V1Feed, connection: V1Connection) -> None:
    limit = guards.CommandLimit(runtime.config.server)
    while True:
        text = await websocket.receive()
        try:
            request: v1.ClientRequest | None = v1.parse_client_message(text)
        except ProtocolError as exc:
            # The original ignored what it did not understand; so do we, but count it.
            runtime.metrics.bad_commands.inc()
            guards.client_log.info("a v1 client sent a bad message: %s", exc)
            request = None
        # A snapshot answer is ~70 KB: it costs more of a client's budget than a ping.
        if not limit.admit(limit.snapshot_cost if request == "get_snapshot" else 1):
            await guards.close_flooding_v1(runtime)
            return
        if request is None:
            continue
        now = runtime.wall_ms()
        if request == "ping":
            connection.queue.push(v1.PONG, v1.dumps(v1.pong_message(now)))
        elif request == "get_snapshot":
            connection.queue.push(v1.SNAPSHOT, feed.snapshot(now))
        connection.wake()

"""Abuse limits in front of the streams: Origin checks, connection limits, command limits.

:func:`guard` is ASGI middleware around the app. A WebSocket handshake on ``/ws`` or
``/ws/stream`` is answered before the upgrade (so it costs no stream, no session) with

- 403 when its ``Origin`` is neither the server's own (the ``Host`` it was asked for) nor in
  ``--allowed-origins`` (``*``: any). Browsers always send ``Origin`` with a WebSocket; a request
  without one comes from a program, which could send any Origin it likes, so it passes.
- 503 when ``--max-connections`` are open, or ``--max-connections-per-ip`` from its address.

:class:`CommandLimit` is each connection's token bucket for the commands it sends; a client past
it is told why and closed with 1008 (:func:`close_flooding_v2`, :func:`close_flooding_v1`).
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import trio
from quart import websocket

from flowboard.config import ServerConfig
from flowboard.limits import ConnectionCounter, TokenBucket
from flowboard.logs import ThrottledLog
from flowboard.protocol.session import ClientSession
from flowboard.server.metrics import Metrics
from flowboard.server.runtime import Runtime

log = logging.getLogger(__name__)
#: What clients cause (bad commands, floods, refusals) is logged within a budget.
client_log = ThrottledLog(log, "client")

CLOSE_POLICY = 1008

#: Paths of the streams the guard checks.
STREAM_PATHS = frozenset({"/ws", "/ws/stream"})

#: Open files kept for everything but client connections: listeners, the database, Redis, logs,
#: the HTTP requests of the moment.
RESERVED_FILES = 64

#: A v1 ``get_snapshot`` costs this many commands: its answer is ~70 KB against a few bytes.
SNAPSHOT_COMMAND_COST = 10

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}

ASGIApp = TypeVar("ASGIApp", bound=Callable[..., Awaitable[None]])


def _host_and_port(netloc: str, scheme: str) -> str:
    """``host:port`` in lower case, with the scheme's default port made explicit."""
    netloc = netloc.lower()
    if netloc.startswith("["):  # an IPv6 literal: [::1]:8000
        end = netloc.find("]") + 1
        host, port = netloc[:end], netloc[end + 1 :]
    else:
        host, _, port = netloc.partition(":")
    return f"{host}:{port or _DEFAULT_PORTS.get(scheme, '80')}"


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a WebSocket handshake with this ``Origin`` may go on.

    Allowed: no Origin (not a browser), ``*`` configured, the server's own origin (the Origin's
    host and port are the ``Host`` the request was sent to, whatever the scheme: a TLS proxy in
    front makes them differ), or one of ``allowed`` (compared as scheme://host:port).
    """
    if origin is None or "*" in allowed:
        return True
    scheme, sep, netloc = origin.strip().partition("://")
    scheme = scheme.lower()
    if not sep or not netloc or "/" in netloc:
        return False  # "null" (sandboxed pages, file:) and anything else that is not an origin
    if host is not None and _host_and_port(netloc, scheme) == _host_and_port(host.strip(), scheme):
        return True
    for entry in allowed:
        entry_scheme, _, entry_netloc = entry.partition("://")
        if entry_scheme.lower() == scheme and _host_and_port(entry_netloc, scheme) == _host_and_port(
            netloc, scheme
        ):
            return True
    return False


def open_files_limit() -> int:
    """This process's soft limit on open files (``ulimit -n``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_limit(configured: int, open_files: int) -> int:
    """The connections we can really hold: never more than the open files leave room for, so
    that a full server answers 503 instead of failing to accept (EMFILE)."""
    room = max(1, open_files - RESERVED_FILES)
    return room if configured == 0 else min(configured, room)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return cast(bytes, value).decode("latin-1")
    return None


async def _refuse(scope: dict[str, Any], send: Any, status: int, reason: str) -> None:
    """Answer a WebSocket handshake with an HTTP error instead of the upgrade."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = reason.encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # A server without the denial-response extension answers a close before accept with 403.
        await send({"type": "websocket.close", "code": CLOSE_POLICY})


def guard(app: ASGIApp, config: ServerConfig, metrics: Metrics) -> ASGIApp:
    """Wrap ``app`` (quart's ``asgi_app``) with the Origin check and the connection limits."""
    open_files = open_files_limit()
    limit = connection_limit(config.max_connections, open_files)
    if limit != config.max_connections:
        log.info(
            "at most %d WebSocket connections (open files limit %d, %d kept for the rest)",
            limit,
            open_files,
            RESERVED_FILES,
        )
    counter = ConnectionCounter(limit, config.max_connections_per_ip)
    metrics.gauge("flowboard_websocket_connections_open", "WebSocket connections open", lambda: counter.total)
    allowed = config.allowed_origins

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket" or scope.get("path") not in STREAM_PATHS:
            await app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        origin = _header(scope, b"origin")
        if not origin_allowed(origin, _header(scope, b"host"), allowed):
            metrics.refused.labels("origin").inc()
            client_log.info("refused a WebSocket from %s: Origin %.100r is not allowed", address, origin)
            await _refuse(scope, send, 403, "this Origin may not open the stream (see --allowed-origins)\n")
            return
        refusal = counter.refusal(address)
        if refusal is not None:
            metrics.refused.labels("limit").inc()
            client_log.info("refused a WebSocket from %s: %s", address, refusal)
            await _refuse(scope, send, 503, refusal + "\n")
            return
        counter.opened(address)
        try:
            await app(scope, receive, send)
        finally:
            counter.closed(address)

    return cast(ASGIApp, asgi)


class CommandLimit:
    """One connection's budget of commands (``--command-rate``, ``--command-burst``)."""

    def __init__(self, config: ServerConfig) -> None:
        self._bucket = TokenBucket(rate_per_s=config.command_rate, burst=config.command_burst)
        # What a v1 get_snapshot costs: never more than a full bucket, or none could pass.
        self.snapshot_cost = min(SNAPSHOT_COMMAND_COST, config.command_burst)

    @staticmethod
    def reason(config: ServerConfig) -> str:
        return (
            f"too many commands: at most {config.command_burst} at once "
            f"and {config.command_rate:g} per second"
        )

    def admit(self, cost: float = 1) -> bool:
        return self._bucket.take(trio.current_time(), cost)


async def close_flooding_v2(runtime: Runtime, session: ClientSession, wake: Callable[[], None]) -> None:
    """Tell a v2 client why (an ``e`` event), close it with 1008, and end its handler.

    Called from the connection's command reader (see :func:`_close_connection`)."""
    reason = CommandLimit.reason(runtime.config.server)
    runtime.metrics.closed_flooding.inc()
    client_log.info("closing a client that sent commands too fast: %s", reason)
    session.report_error(reason)
    wake()
    # Give the send loop a moment to put the `e` on the wire before the close frame. The session
    # signals nothing when a frame leaves (the send loop is the delivery code's), hence a short,
    # bounded poll on this rare path.
    with trio.move_on_after(1):
        while session.has_pending(runtime.wall_ms()):  # noqa: ASYNC110
            await trio.sleep(0.01)
    await _close_connection(reason)


async def close_flooding_v1(runtime: Runtime) -> None:
    """v1 has no error message: the close reason says why."""
    reason = CommandLimit.reason(runtime.config.server)
    runtime.metrics.closed_flooding.inc()
    client_log.info("closing a v1 client that sent commands too fast: %s", reason)
    await _close_connection(reason)


async def _close_connection(reason: str) -> None:
    """From a connection's command reader: end the connection's handler, closing with 1008.

    The reader runs in the handler's nursery next to the send loop. Cancelling that nursery
    first stops the send loop at its next checkpoint, so it never sends after the close frame
    (hypercorn refuses that with an error); the close itself is shielded so that it still goes
    out. Then the handler returns and hypercorn closes the socket."""
    nursery = trio.lowlevel.current_task().parent_nursery
    assert nursery is not None
    nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        await websocket.close(CLOSE_POLICY, reason[:120])

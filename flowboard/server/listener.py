"""hypercorn over a listener that survives running out of file descriptors.

When ``accept()`` fails for lack of descriptors (EMFILE, ENFILE, ...), trio's ``serve_listeners``
logs an error with a traceback and retries every 100 ms: ten tracebacks a second for as long as
the shortage lasts. :class:`PatientListener` takes those failures itself: it logs once when the
shortage starts and once when it ends, waits with exponential backoff in between (new
connections wait in the kernel's backlog meanwhile), and counts the failed attempts.

hypercorn's ``worker_serve`` builds its listeners from the sockets it is given, so
:func:`serve_hypercorn` is its serving part (lifespan, TCP servers, graceful shutdown on a
deadline) over listeners we build; the classes it uses are hypercorn's own, pinned (0.18.0)
like the rest of our extension points (deflate.py, connection.py).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr

from flowboard.limits import backoff_s

log = logging.getLogger(__name__)

#: accept() errors that mean "no descriptor or memory for one more connection right now".
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class PatientListener(trio.abc.Listener[trio.SocketStream]):
    """A socket listener whose ``accept`` waits out a descriptor shortage instead of failing."""

    def __init__(
        self,
        inner: trio.abc.Listener[trio.SocketStream],
        *,
        first_delay_s: float = 0.1,
        max_delay_s: float = 2.0,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        # Called for each accept that failed for lack of descriptors (a metrics counter).
        self.on_failure = on_failure
        # Failed accepts since the shortage began; 0 when accepting normally.
        self.failures = 0

    async def accept(self) -> trio.SocketStream:
        while True:
            try:
                stream = await self.inner.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                self._failed(exc.errno)
                await trio.sleep(backoff_s(self.failures, self.first_delay_s, self.max_delay_s))
                continue
            if self.failures:
                log.warning("accepting connections again (%d attempts failed meanwhile)", self.failures)
                self.failures = 0
            return stream

    def _failed(self, code: int) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        if self.failures == 1:
            log.warning(
                "cannot accept connections: %s (%s); new connections wait until descriptors free up "
                "(raise `ulimit -n`, or lower --max-connections); retrying with backoff",
                errno.errorcode[code],
                os.strerror(code),
            )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def serve_hypercorn(
    app: AppWrapper,
    config: HypercornConfig,
    sockets: list[socket.socket],
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    on_accept_failure: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on listening ``sockets`` (plain HTTP) until ``shutdown_trigger`` returns;
    then let connections finish for ``config.graceful_timeout`` seconds. Reports the bound
    addresses (``http://host:port``) once serving."""
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners = [
                PatientListener(
                    trio.SocketListener(trio.socket.from_stdlib_socket(sock)), on_failure=on_accept_failure
                )
                for sock in sockets
            ]
            binds = [f"http://{repr_socket_addr(sock.family, sock.getsockname())}" for sock in sockets]
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            partial(TCPServer, app, config, context, ConnectionState(lifespan_state.copy())),
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from error
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()

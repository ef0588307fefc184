"""The parts of a running server that its handlers share (built once by the pipeline)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

from flowboard.aggregate.aggregator import Aggregator
from flowboard.config import Config
from flowboard.model import MarketMeta
from flowboard.scaleout.redis_io import StreamJournal
from flowboard.server.hub import Hub
from flowboard.server.metrics import Metrics
from flowboard.store import Store

#: The WebSocket protocols served: v2 on ``/ws``, v1 on ``/ws/stream``.
PROTOCOLS = ("v1", "v2")


@attrs.define(eq=False)
class Runtime:
    config: Config
    agg: Aggregator
    hub: Hub
    metrics: Metrics
    wall_ms: Callable[[], int]
    store: Store | None = None
    # Role ingest: the hub's listener that cuts each publish into a batch for the Redis stream.
    journal: StreamJournal | None = None
    # Addresses hypercorn listens on, e.g. ["http://127.0.0.1:8000"].
    binds: list[str] = attrs.Factory(list)
    # Why /readyz says not ready (empty when ready).
    not_ready: set[str] = attrs.Factory(lambda: {"starting"})
    # Set to begin a graceful shutdown.
    stop_requested: trio.Event = attrs.Factory(trio.Event)
    # Market metadata fetched but not yet saved to the store.
    metas_to_save: list[MarketMeta] = attrs.Factory(list)
    # Open WebSocket connections by protocol: every v1 connection counts, although one shared
    # feed serves them all.
    open_connections: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(PROTOCOLS, 0))

    @contextmanager
    def connection(self, protocol: str) -> Iterator[None]:
        """Count one open connection of ``protocol`` ("v1" or "v2") while the block runs."""
        self.open_connections[protocol] += 1
        try:
            yield
        finally:
            self.open_connections[protocol] -= 1

    def readiness_problems(self) -> list[str]:
        """Why /readyz says not ready; empty when ready."""
        problems = sorted(self.not_ready)
        if self.store is not None:
            stats = self.store.statistics()
            if not stats.healthy:
                # Plain words for anyone who can reach /readyz; the database's own error text
                # (which names the file or host) is in the log, where the writer reported it.
                problems.append(
                    f"the database is failing or slow: {stats.queued:,} trades waiting to be written"
                )
        return problems

    @property
    def url(self) -> str:
        return self.binds[0]

    def request_stop(self) -> None:
        self.stop_requested.set()

"""The parts of a running server that its handlers share (built once by the pipeline)."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from flowboard.aggregate.aggregator import Aggregator
from flowboard.config import Config
from flowboard.server.hub import Hub
from flowboard.server.metrics import Metrics


@attrs.define(eq=False)
class Runtime:
    config: Config
    agg: Aggregator
    hub: Hub
    metrics: Metrics
    wall_ms: Callable[[], int]
    # Addresses hypercorn listens on, e.g. ["http://127.0.0.1:8000"].
    binds: list[str] = attrs.Factory(list)
    # Why /readyz says not ready (empty when ready).
    not_ready: set[str] = attrs.Factory(lambda: {"starting"})
    # Set to begin a graceful shutdown.
    stop_requested: trio.Event = attrs.Factory(trio.Event)

    @property
    def url(self) -> str:
        return self.binds[0]

    def request_stop(self) -> None:
        self.stop_requested.set()

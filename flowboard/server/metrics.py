"""Prometheus metrics of one process (a registry of its own, so tests can run several).

Next to ours, what operators expect of any process: resident memory, CPU seconds and open
descriptors (``process_*``, Linux), the interpreter (``python_info``) and the garbage
collector (``python_gc_*``). The ``_created`` series are left out: one per counter, they
only repeat the process start time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from flowboard.logs import SuppressedLinesCollector

# A process-wide switch of prometheus-client; every registry here is one process's.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.trades_ingested = Counter(
            "flowboard_trades_ingested", "Trades accepted by the aggregator", registry=r
        )
        self.duplicates = Counter(
            "flowboard_trades_duplicate", "Trades ignored because their trade_id was seen", registry=r
        )
        self.unverified = Counter(
            "flowboard_trades_unverified",
            "Trades older than the remembered ids, stored but not shown: the store could not be asked",
            registry=r,
        )
        self.feed_messages = Counter(
            "flowboard_feed_messages", "Raw feed messages read, by type", ["type"], registry=r
        )
        self.malformed = Counter(
            "flowboard_feed_malformed", "Feed messages that could not be used (skipped)", registry=r
        )
        self.frames_sent = Counter(
            "flowboard_frames_sent",
            "WebSocket frames sent to clients, by kind",
            ["protocol", "kind"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "flowboard_bytes_sent",
            "Frame payload bytes before compression, by kind",
            ["protocol", "kind"],
            registry=r,
        )
        self.batched_frames = Counter(
            "flowboard_client_batched_frames", "Frames that carried more than one trade", registry=r
        )
        self.conflated = Counter(
            "flowboard_client_conflated_updates", "Keyed updates absorbed into a later value", registry=r
        )
        self.resyncs = Counter("flowboard_client_resyncs", "Clients resynced from a snapshot", registry=r)
        self.closed_slow = Counter(
            "flowboard_client_closed_slow", "Clients closed with 4008 (too slow)", registry=r
        )
        self.bad_commands = Counter(
            "flowboard_client_bad_commands", "Client frames that were not valid commands", registry=r
        )
        self.deflate_offers_declined = Counter(
            "flowboard_client_deflate_offers_declined",
            "Malformed permessage-deflate offers declined (served uncompressed)",
            registry=r,
        )
        self.inflate_refused = Counter(
            "flowboard_client_inflate_refused",
            "Compressed client messages refused with 1009 as they inflated past the command limit",
            registry=r,
        )
        self.connections = Counter(
            "flowboard_client_connections",
            "WebSocket connections accepted, by protocol",
            ["protocol"],
            registry=r,
        )
        self.resumed = Counter("flowboard_client_resumed", "Connections that resumed from a seq", registry=r)
        self.refused = Counter(
            "flowboard_client_refused",
            "WebSocket handshakes refused before the upgrade: origin (403) or limit (503)",
            ["reason"],
            registry=r,
        )
        self.closed_flooding = Counter(
            "flowboard_client_closed_flooding",
            "Clients closed with 1008 for sending commands faster than --command-rate",
            registry=r,
        )
        self.accept_failures = Counter(
            "flowboard_accept_failures",
            "accept() calls that failed for lack of file descriptors (retried with backoff)",
            registry=r,
        )
        r.register(SuppressedLinesCollector())
        self.loop_lag = Histogram(
            "flowboard_loop_lag_seconds",
            "How late a periodic timer of the event loop ran",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read at scrape time (queue depths, client counts)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def gauge_by_label(
        self, name: str, documentation: str, label: str, reads: dict[str, Callable[[], float]]
    ) -> None:
        """One gauge with a series per value of ``label``, each read at scrape time."""
        gauge = Gauge(name, documentation, [label], registry=self.registry)
        for value, read in reads.items():
            gauge.labels(value).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)

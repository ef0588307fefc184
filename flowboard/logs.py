"""Log lines caused by bad input, rate-limited so that no input can flood the log.

A client or a feed decides how often bad input arrives; the log must not follow it. A
:class:`ThrottledLog` lets the first ``burst`` lines through, then one per ``interval_s``; a line
let through after some were held back ends with "(and K more like it)". The lines held back are
counted per source (``feed``, ``client``, ...) for ``/metrics``
(``flowboard_log_lines_suppressed_total``), process-wide like the log itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from flowboard.limits import TokenBucket

#: Lines held back since start, by source.
_suppressed: Counter[str] = Counter()


class ThrottledLog:
    """One kind of input-caused log line (e.g. "malformed feed message") with its own budget."""

    def __init__(
        self,
        logger: logging.Logger,
        source: str,
        *,
        burst: int = 10,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.source = source
        self._bucket = TokenBucket(rate_per_s=1 / interval_s, burst=burst)
        self._clock = clock
        # Lines held back since the last one let through.
        self._held_back = 0

    def log(self, level: int, message: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        if not self._bucket.take(self._clock()):
            self._held_back += 1
            _suppressed[self.source] += 1
            return
        if self._held_back:
            message += " (and %d more like it since the last one logged)"
            args = (*args, self._held_back)
            self._held_back = 0
        self.logger.log(level, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.log(logging.WARNING, message, *args)

    def info(self, message: str, *args: object) -> None:
        self.log(logging.INFO, message, *args)


def suppressed_lines() -> dict[str, int]:
    """Lines held back since start, by source."""
    return dict(_suppressed)


class SuppressedLinesCollector(Collector):
    """``flowboard_log_lines_suppressed_total{source}`` for a metrics registry."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "flowboard_log_lines_suppressed",
            "Log lines about bad input held back by the rate limit, by source",
            labels=["source"],
        )
        for source, count in sorted(_suppressed.items()):
            family.add_metric([source], count)
        yield family

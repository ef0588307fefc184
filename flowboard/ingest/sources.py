"""Trade sources as trio tasks, and :func:`open_source`, which picks the configured one.

Every source sends :data:`~flowboard.ingest.feed.FeedItem` (parsed trades, market metadata)
down a channel into aggregation; ``flowboard serve`` and ``flowboard record`` both start theirs
with :func:`open_source`. Parsing lives with the sources that receive text (``kalshi``,
``recording``), once; the simulator never makes text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial

import trio

from flowboard.config import SourceConfig
from flowboard.ingest.feed import FeedCounters, FeedItem, RawMessage, Received
from flowboard.ingest.kalshi import KalshiConfig, serve_kalshi
from flowboard.ingest.recording import ReplayClock, serve_replay
from flowboard.ingest.simulator import Simulator

__all__ = ["FeedItem", "RawMessage", "Received", "open_source", "serve_simulator"]


async def serve_simulator(
    sim: Simulator,
    send: trio.MemorySendChannel[FeedItem],
    *,
    wall_ms: Callable[[], int],
    burst: tuple[float, float] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Play ``sim`` in real time: each trade is sent when ``wall_ms()`` reaches its time. Runs
    until cancelled.

    The simulator keeps its own clock: when the process falls behind, the trades that came due
    meanwhile are all sent at once (a busy server sees the whole load, never a thinned one).
    ``burst=(rate, seconds)`` plays that rate first, then the simulator's own."""
    task_status.started()
    at_ms = wall_ms()
    base_rate: float | None = None
    burst_until_ms = at_ms
    if burst is not None:
        base_rate = sim.rate
        sim.set_rate(burst[0])
        burst_until_ms = at_ms + int(burst[1] * 1000)
    while True:
        if base_rate is not None and at_ms >= burst_until_ms:
            sim.set_rate(base_rate)
            base_rate = None
        at_ms, trade = sim.next_trade(at_ms)
        delay_ms = at_ms - wall_ms()
        if delay_ms > 0:
            await trio.sleep(delay_ms / 1000)
        await send.send(Received(received_ms=wall_ms(), trade=trade))


def open_source(
    config: SourceConfig,
    kalshi: KalshiConfig,
    send: trio.MemorySendChannel[FeedItem],
    *,
    wall_ms: Callable[[], int],
    counters: FeedCounters | None = None,
    simulator: Simulator | None = None,
    replay_clock: ReplayClock | None = None,
    last_stored_ts_ms: int | None = None,
    known_ids: Iterable[str] = (),
) -> Callable[..., Awaitable[object]]:
    """The task (for ``nursery.start``) that feeds ``send`` from ``config.kind``'s source.

    ``simulator``: the one to play (the server's resumes its markets after a restart; a new
    one otherwise). ``replay_clock``: the clock a replay runs on. ``last_stored_ts_ms`` and
    ``known_ids``: where Kalshi's start-up backfill begins and what it must not repeat."""
    if config.kind == "sim":
        sim = simulator or Simulator(
            seed=config.seed, rate=config.rate, n_markets=config.sim_markets, start_ms=wall_ms()
        )
        return partial(serve_simulator, sim, send, wall_ms=wall_ms, burst=config.sim_burst)
    if config.kind == "kalshi":
        return partial(
            serve_kalshi,
            kalshi,
            send,
            wall_ms=wall_ms,
            counters=counters,
            last_stored_ts_ms=lambda: last_stored_ts_ms,
            known_ids=known_ids,
        )
    assert config.replay_file is not None, "validated with the configuration"
    return partial(
        serve_replay, config.replay_file, send, speed=config.speed, clock=replay_clock, counters=counters
    )

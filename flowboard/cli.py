"""``flowboard`` command line: parse the configuration, run the server, stop on SIGINT, SIGTERM
or SIGHUP (all three gracefully: clients closed with 1001, the store flushed).

A configuration that cannot work, or a database that cannot be used (corrupt, or of a schema
version this Flowboard does not know), stops start-up with one line and exit status 2.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
from collections.abc import Iterator, Sequence

import trio

from flowboard.config import Config, parse_argv
from flowboard.errors import ConfigError, StoreError
from flowboard.ingest.feed import FeedItem
from flowboard.ingest.recording import record
from flowboard.ingest.simulator import Simulator
from flowboard.ingest.sources import open_source
from flowboard.model import wall_clock_ms
from flowboard.scaleout.workers import serve_workers
from flowboard.server.pipeline import run_server

#: Signals that stop the process gracefully. SIGHUP too: a closed terminal or a supervisor's
#: hang-up must not kill the process before it has flushed the store.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _serve_until_signalled(config: Config) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            runtime = await nursery.start(run_server, config)
            # Tests and scripts read the bound address (with --port 0) from this line.
            print(f"flowboard listening on {runtime.url}", flush=True)
            async for signum in signals:
                logging.getLogger("flowboard").info("received %s", signal.Signals(signum).name)
                runtime.request_stop()
                break


async def _supervise_until_signalled(config: Config, argv: Sequence[str]) -> None:
    """``--workers N``: one ingest and N edges as child processes; a signal stops them all."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_workers, config, argv)
            print(f"flowboard listening on {url}", flush=True)
            async for signum in signals:
                logging.getLogger("flowboard").info(
                    "received %s: stopping the workers", signal.Signals(signum).name
                )
                nursery.cancel_scope.cancel()
                break


async def _record_until_stopped(config: Config) -> None:
    """``flowboard record``: the raw feed into a JSON Lines file, until Ctrl-C or --duration."""
    out = config.record.out
    assert out is not None, "validated with the configuration"
    source = config.source
    send, receive = trio.open_memory_channel[FeedItem](source.ingest_buffer)
    stop = trio.Event()
    sim = None
    if source.kind == "sim":
        sim = Simulator(
            seed=source.seed, rate=source.rate, n_markets=source.sim_markets, start_ms=wall_clock_ms()
        )
    # The simulator's markets go first, so a replay shows their titles (Kalshi's come from REST).
    metas = sim.markets if sim is not None else ()
    serve_source = open_source(source, config.kalshi, send, wall_ms=wall_clock_ms, simulator=sim)

    async def feed(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with send, trio.open_nursery() as sources:
            await sources.start(serve_source)
            task_status.started()
            await stop.wait()
            sources.cancel_scope.cancel()

    async def stop_on_signal_or_deadline() -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            duration_s = config.record.duration_s
            with trio.move_on_after(duration_s if duration_s is not None else math.inf):
                async for _ in signals:
                    break
        stop.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(feed)
        nursery.start_soon(stop_on_signal_or_deadline)
        stats = await record(receive, out, config.record.gzip, metas=metas)
        nursery.cancel_scope.cancel()
    print(f"recorded {stats.messages} messages to {out}", flush=True)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The errors themselves: nurseries nest each one in a group per level."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        command, config = parse_argv(args)
    except ConfigError as exc:
        print(f"flowboard: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if command == "record":
            trio.run(_record_until_stopped, config)
        elif config.scaleout.workers:
            trio.run(_supervise_until_signalled, config, args)
        else:
            trio.run(_serve_until_signalled, config)
    except (ConfigError, StoreError) as error:
        print(f"flowboard: error: {error}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        startup_errors, others = group.split((ConfigError, StoreError))
        if startup_errors is None or others is not None:
            raise
        for leaf in _leaves(startup_errors):
            print(f"flowboard: error: {leaf}", file=sys.stderr)
        return 2
    return 0

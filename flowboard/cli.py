"""``flowboard`` command line: parse the configuration, run the server, stop on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

import trio

from flowboard.config import Config, parse_argv
from flowboard.errors import ConfigError
from flowboard.server.pipeline import run_server


async def _serve_until_signalled(config: Config) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            runtime = await nursery.start(run_server, config)
            # Tests and scripts read the bound address (with --port 0) from this line.
            print(f"flowboard listening on {runtime.url}", flush=True)
            async for signum in signals:
                logging.getLogger("flowboard").info("received %s", signal.Signals(signum).name)
                runtime.request_stop()
                break


def main(argv: Sequence[str] | None = None) -> int:
    try:
        _command, config = parse_argv(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"flowboard: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        trio.run(_serve_until_signalled, config)
    except BaseExceptionGroup as group:
        config_errors, others = group.split(ConfigError)
        if config_errors is None or others is not None:
            raise
        for error in config_errors.exceptions:
            print(f"flowboard: error: {error}", file=sys.stderr)
        return 2
    return 0

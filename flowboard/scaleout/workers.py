"""``flowboard serve --workers N``: one ingest and N edge processes on this machine, supervised.

The edges all listen on ``--port`` with SO_REUSEPORT, so the kernel spreads connections over
them and one machine's cores all serve clients; the ingest listens on a loopback port of its
own (its ``/metrics`` and ``/readyz``). They meet in Redis like processes on different machines.
The parent only supervises: a child that dies is started again (after 1 s, doubling to 30 s
while it keeps dying young); SIGINT/SIGTERM to the parent stops the children gracefully.
Each child's stdout line is passed on with its name in front; their logs go to our stderr.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Sequence

import attrs
import trio

from flowboard.config import Config

log = logging.getLogger(__name__)

_LISTENING = "flowboard listening on "
_GRACE_S = 10.0  # a child asked to stop gets this long before SIGKILL
_STABLE_S = 60.0  # a child that ran this long is restarted after the shortest delay again


@attrs.define(eq=False)
class Child:
    name: str
    args: list[str]
    # Set the first time the child says where it listens.
    listening: trio.Event = attrs.Factory(trio.Event)
    url: str = ""
    restarts: int = 0


def child_args(argv: Sequence[str], role: str, config: Config) -> list[str]:
    """The child's command line: ours, with the role's settings last (the last flag wins)."""
    base = [sys.executable, "-m", "flowboard", *argv, "--workers", "0", "--role", role]
    if role == "ingest":
        return [*base, "--host", "127.0.0.1", "--port", "0"]
    return [*base, "--reuse-port"]


async def serve_workers(
    config: Config, argv: Sequence[str], *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run and supervise the children until cancelled; started with the edges' URL once each
    edge listens."""
    children = [Child("ingest", child_args(argv, "ingest", config))]
    children += [
        Child(f"edge {n}", child_args(argv, "edge", config)) for n in range(1, config.scaleout.workers + 1)
    ]
    async with trio.open_nursery() as nursery:
        for child in children:
            nursery.start_soon(_keep_running, child)
        for child in children[1:]:
            await child.listening.wait()
        task_status.started(f"http://{config.server.host}:{config.server.port}")
        log.info(
            "%d edges listening on port %d; ingest at %s",
            config.scaleout.workers,
            config.server.port,
            children[0].url or "?",
        )


async def _keep_running(child: Child) -> None:
    delay = 1.0
    while True:
        started = trio.current_time()
        code = await _run_once(child)
        if trio.current_time() - started > _STABLE_S:
            delay = 1.0
        child.restarts += 1
        log.warning("%s exited with code %s; starting it again in %.0f s", child.name, code, delay)
        await trio.sleep(delay)
        delay = min(30.0, delay * 2)


async def _run_once(child: Child) -> int:
    process = await trio.lowlevel.open_process(child.args, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        buffered = b""
        while True:
            data = await process.stdout.receive_some()
            if not data:
                break
            buffered += data
            *lines, buffered = buffered.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.startswith(_LISTENING):
                    child.url = line[len(_LISTENING) :].strip()
                    child.listening.set()
                print(f"[{child.name}] {line}", flush=True)
        return await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)


async def _stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(_GRACE_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()

"""How long the ingest's event loop stops for one snapshot of a busy window, inline versus forked.

    python -m bench.snapshot_pause [--trades 36000] [--runs 5] [--redis URL | --no-redis]

Builds the ingest's aggregator (``JournalingAggregator``) from the seeded simulator with about
``--trades`` trades inside its 10-minute window, then, in a trio loop whose only other task is a
1 ms ticker, takes snapshots the way ``_write_snapshot`` does: ``dump_state`` on the loop (how it
was) or ``dump_in_child`` (a forked child, how it is), then one HSET of the bytes into Redis
(when reachable: the write is part of the snapshot's cost to the loop). Mode ``none`` takes no
snapshot: the noise floor of the machine.

Two figures per snapshot: the longest gap between two ticks (wall clock, what a client would
see, but on a shared machine it also counts time the process waited for a core), and the
longest task step in thread CPU time (how long the loop ran code without yielding: the pause
the snapshot itself causes, whatever the load). Prints and writes, per mode, the medians over
``--runs`` and the fork's and the child's times to bench/results/snapshot_pause.json. The target
(issue 10, item 4): <= 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import coredis
import trio

from bench.server import machine
from flowboard.ingest.simulator import Simulator
from flowboard.scaleout.forked import ChildDump, dump_in_child
from flowboard.scaleout.stream import JournalingAggregator, dump_state

RESULTS_PATH = Path(__file__).parent / "results" / "snapshot_pause.json"
REDIS_URL = os.environ.get("FLOWBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
BASE_MS = 1_795_800_000_000
WINDOW_S = 600
TICK_S = 0.001
MODES = ("none", "inline", "forked")


def busy_window(trades: int, seed: int = 42) -> JournalingAggregator:
    """An ingest's aggregator with ``trades`` trades in its window, all markets' metadata known."""
    agg = JournalingAggregator()
    sim = Simulator(seed=seed, rate=trades / WINDOW_S, start_ms=BASE_MS - WINDOW_S * 1000)
    for meta in sim.markets:
        agg.set_meta(meta)
    for trade in sim.history(BASE_MS, WINDOW_S - 1):
        agg.add_trade(trade, trade.ts_ms)
    agg.advance(BASE_MS)
    agg.take_journal()
    return agg


class _StepTimer(trio.abc.Instrument):
    """The CPU time of the longest task step: how long the loop ran one piece of code without
    yielding, whatever else the machine was doing (a wall-clock gap also counts preemption)."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        # None for the step that added the instrument (it began before we were there).
        self._started: float | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is not None:
            self.longest_s = max(self.longest_s, time.thread_time() - self._started)


async def _longest_pause(snapshot: Callable[[], Awaitable[bytes]]) -> tuple[float, float, int]:
    """Run ``snapshot`` once beside a 1 ms ticker: the longest gap between ticks (wall), the
    longest task step (CPU), and the snapshot's size."""
    gaps: list[float] = []
    done = trio.Event()
    steps = _StepTimer()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(TICK_S)
            now = time.perf_counter()
            gaps.append(now - last - TICK_S)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.sleep(0.05)  # the ticker's rhythm before
        trio.lowlevel.add_instrument(steps)
        await trio.lowlevel.checkpoint()  # the snapshot starts in a step the instrument sees
        data = await snapshot()
        trio.lowlevel.remove_instrument(steps)
        await trio.sleep(0.05)  # and after: a stall may show only once the snapshot returns
        done.set()
    return max(gaps), steps.longest_s, len(data)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def measure(trades: int, runs: int, redis_url: str | None) -> dict[str, Any]:
    agg = busy_window(trades)
    key = f"bench-snapshot-{uuid.uuid4().hex}"
    results: dict[str, Any] = {"trades_in_window": agg.statistics().trades_in_window}
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(coredis.Redis.from_url(redis_url)) if redis_url else None
        try:
            for mode in MODES:
                pauses, steps, sizes, child_s, fork_s = [], [], [], [], []
                for _ in range(runs):
                    forked: list[ChildDump] = []

                    async def snapshot(mode: str = mode, forked: list[ChildDump] = forked) -> bytes:
                        if mode == "none":
                            await trio.sleep(0.3)  # the noise floor: a loop that only ticks
                            return b""
                        if mode == "inline":
                            data = dump_state(agg)
                        else:
                            forked.append(await dump_in_child(partial(dump_state, agg)))
                            data = forked[0].data
                        if redis is not None:
                            await redis.hset(key, {"state": data})
                        return data

                    pause, step, size = await _longest_pause(snapshot)
                    pauses.append(pause)
                    steps.append(step)
                    sizes.append(size)
                    child_s.extend(d.took_s for d in forked)
                    fork_s.extend(d.pause_s for d in forked)
                results[mode] = {
                    "longest_pause_ms_median": _ms(statistics.median(pauses)),
                    "longest_pause_ms_runs": [_ms(p) for p in pauses],
                    "longest_step_cpu_ms_median": _ms(statistics.median(steps)),
                    "longest_step_cpu_ms_runs": [_ms(p) for p in steps],
                    "state_bytes": sizes[0],
                    "fork_ms_median": _ms(statistics.median(fork_s)) if fork_s else None,
                    "child_wall_ms_median": _ms(statistics.median(child_s)) if child_s else None,
                }
        finally:
            if redis is not None:
                await redis.delete([key])
    return results


def _reachable(url: str) -> bool:
    async def ping() -> None:
        async with coredis.Redis.from_url(url) as client:
            await client.ping()

    try:
        trio.run(ping)
    except (OSError, coredis.exceptions.ConnectionError):
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.snapshot_pause", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--trades", type=int, default=36_000, help="trades in the 10-minute window")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--redis", default=REDIS_URL, help="Redis for the HSET (skipped if unreachable)")
    parser.add_argument("--no-redis", action="store_true", help="measure the dump alone")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    redis_url = None if args.no_redis or not _reachable(args.redis) else args.redis
    results = trio.run(measure, args.trades, args.runs, redis_url)
    results["redis_hset"] = redis_url is not None
    print(
        f"{results['trades_in_window']} trades in the window, {args.runs} runs, "
        f"HSET into Redis: {redis_url is not None}"
    )
    header = f"{'mode':8} {'longest pause, wall':>20} {'runs (ms)':>40} {'longest step, CPU':>18}"
    print(f"{header} {'state':>8} {'fork':>8} {'child':>9}")
    for mode in MODES:
        row = results[mode]
        fork = f"{row['fork_ms_median']} ms" if row["fork_ms_median"] is not None else "-"
        child = f"{row['child_wall_ms_median']} ms" if row["child_wall_ms_median"] is not None else "-"
        runs = ", ".join(str(p) for p in row["longest_pause_ms_runs"])
        print(
            f"{mode:8} {row['longest_pause_ms_median']:>17} ms {runs:>40} "
            f"{row['longest_step_cpu_ms_median']:>15} ms "
            f"{row['state_bytes'] / 1e6:>5.2f} MB {fork:>8} {child:>9}"
        )
    record = {
        "machine": machine(),
        "command": " ".join(["python -m bench.snapshot_pause", *argv]),
        "parameters": vars(args),
        "results": results,
    }
    RESULTS_PATH.parent.mkdir(exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

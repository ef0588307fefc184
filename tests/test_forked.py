"""Serialising in a forked child (the ingest's snapshot): the bytes are of the moment of the call,
failures and cancellation leave no child behind."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from flowboard.config import ScaleoutConfig
from flowboard.errors import ChildDumpError
from flowboard.scaleout.forked import dump_in_child


async def test_the_bytes_are_of_the_moment_of_the_call_though_the_state_changes_at_once() -> None:
    """The loop changes the state while the child pickles it: the child still sees the fork's image."""
    state = {"trades": list(range(200_000))}
    results: list[bytes] = []

    async def snapshot() -> None:
        results.append((await dump_in_child(lambda: pickle.dumps(state))).data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(snapshot)
        await trio.testing.wait_all_tasks_blocked()  # forked, now reading the pipe
        state["trades"].clear()
        state["added"] = ["after the fork"]
    assert pickle.loads(results[0]) == {"trades": list(range(200_000))}


async def test_a_failing_child_is_an_error_that_says_how_it_ended() -> None:
    """dump() raising in the child: the caller gets ChildDumpError with the exit code, no bytes."""

    def broken() -> bytes:
        raise RuntimeError("cannot pickle this")

    with pytest.raises(ChildDumpError, match="exited with 1, expected 0"):
        await dump_in_child(broken)


async def test_cancelling_kills_and_reaps_the_child(tmp_path: Path) -> None:
    """A snapshot cancelled mid-way (shutdown) leaves neither a running child nor a zombie."""
    pid_file = tmp_path / "child.pid"

    def forever() -> bytes:
        pid_file.write_text(str(os.getpid()))
        time.sleep(3600)
        return b""

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dump_in_child, forever)
        while not pid_file.exists() or not pid_file.read_text():
            await trio.to_thread.run_sync(time.sleep, 0.01)  # the child's start takes real time
        nursery.cancel_scope.cancel()
    pid = int(pid_file.read_text())
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG does not wait): already reaped
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # and gone


async def test_a_snapshot_child_that_dies_does_not_stop_the_ingest(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """A child killed before it handed over its bytes (the OOM killer, a signal to the process
    group) is counted and logged; the snapshot loop tries again next period instead of ending
    the ingest's nursery."""
    from flowboard.scaleout import redis_io

    attempts: list[int] = []

    async def write_snapshot(*args: object) -> None:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise ChildDumpError("the snapshot child was killed by signal 9")

    monkeypatch.setattr(redis_io, "_write_snapshot", write_snapshot)
    stats = redis_io.PublisherStats()
    settings = ScaleoutConfig(redis="redis://127.0.0.1:1/0", snapshot_s=5)
    with trio.move_on_after(12):
        await redis_io._snapshots_forever(None, None, None, 0, stats, settings)  # type: ignore[arg-type]
    assert attempts == [0, 1]
    assert stats.snapshot_failures == 1

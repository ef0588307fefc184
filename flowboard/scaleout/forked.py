"""Serialising a big state without stopping the event loop: in a forked child, as Redis's BGSAVE.

Pickling a busy window (30,000 trades) takes about 0.26 s of CPU with the GIL held, so neither
the event loop nor a worker thread can do it without stalling every client for that long. A
forked child gets a copy-on-write image of the process at the moment of the fork, pickles that,
writes the bytes to a pipe and exits; the loop only pays for ``fork()`` (copying the page tables:
a few milliseconds for a few hundred MiB) and reads the pipe as bytes arrive. The state cannot
change under the child, so the bytes are of exactly the moment of the call.

The child runs only ``dump`` and ``os.write`` and leaves with ``os._exit``: no trio, no logging,
no atexit handlers, nothing flushed twice. It takes no lock another thread could have held at
the fork (the state belongs to the loop's thread, which forks holding the GIL), so the usual
hazard of forking a threaded process does not apply. Linux and other Unix systems only.
"""

from __future__ import annotations

import gc
import os
import signal
import time
import warnings
from collections.abc import Callable
from typing import NoReturn

import attrs
import trio

from flowboard.errors import ChildDumpError

_READ_SIZE = 1 << 20


@attrs.frozen
class ChildDump:
    data: bytes
    pause_s: float  # how long the caller's loop stopped (the fork itself)
    took_s: float  # from the fork to the last byte read


async def dump_in_child(dump: Callable[[], bytes]) -> ChildDump:
    """``dump()``, run in a forked child; its bytes, read without blocking the loop.

    The fork happens before this function's first checkpoint: whatever the caller read from the
    state just before calling is of the same moment as the bytes.
    """
    started = time.perf_counter()
    read_fd, write_fd = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a threaded process; the module docstring says
            # why this child is safe (it only pickles the loop thread's own objects).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        _run_child(dump, read_fd, write_fd)
    pause_s = time.perf_counter() - started
    os.close(write_fd)
    chunks: list[bytes] = []
    try:
        async with trio.lowlevel.FdStream(read_fd) as pipe:
            while chunk := await pipe.receive_some(_READ_SIZE):
                chunks.append(chunk)
    except BaseException:
        # Cancelled (shutdown) or the pipe broke: the child must not outlive this call.
        os.kill(pid, signal.SIGKILL)
        await _reap(pid)
        raise
    code = await _reap(pid)
    if code != 0:
        raise ChildDumpError(f"the child serialising the state exited with {code}, expected 0")
    return ChildDump(b"".join(chunks), pause_s, time.perf_counter() - started)


async def _reap(pid: int) -> int:
    """Wait for the child (it closed its pipe or was killed, so it is ending) and give its exit code."""
    with trio.CancelScope(shield=True):
        _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
    return os.waitstatus_to_exitcode(status)


def _run_child(dump: Callable[[], bytes], read_fd: int, write_fd: int) -> NoReturn:
    code = 1
    try:
        # The parent's signal handling is trio's: a signal here must not wake the parent's loop
        # through the wakeup fd the two share, and Ctrl-C should just end the child.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # Every inherited descriptor but the pipe (stdio aside): a socket the parent closes
        # meanwhile must really close, not stay open in this copy until the child exits.
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, os.sysconf("SC_OPEN_MAX"))
        # Background work: on a busy machine the loop (and every other process) goes first, so
        # the child's CPU never delays a client; the snapshot just takes longer.
        os.nice(19)
        # A collection would touch every tracked object, copying pages for nothing.
        gc.disable()
        view = memoryview(dump())
        while view:
            view = view[os.write(write_fd, view) :]
        code = 0
    finally:
        os._exit(code)

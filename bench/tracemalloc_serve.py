"""``python -m flowboard`` with tracemalloc on, for ``bench soak --tracemalloc DIR`` only.

The product has no such switch: tracing every allocation costs the server a large part of its CPU
(start-up's warm start alone took minutes under it). So the first SIGUSR1 starts tracing, and each
one after it writes a snapshot (``DIR/snapshot-N.pickle``, N counting from 1), between two bytecodes
of the main thread; ``python -m bench.tracemalloc_serve --compare A B`` prints what grew from A to
B, grouped by traceback.
"""

from __future__ import annotations

import argparse
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

#: Enough frames to see which of our call sites an allocation inside a library comes from.
FRAMES = 12


def _serve(directory: Path, argv: list[str]) -> None:
    count = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
            return
        count += 1
        tracemalloc.take_snapshot().dump(str(directory / f"snapshot-{count}.pickle"))

    directory.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGUSR1, dump)
    sys.argv = ["flowboard", *argv]
    runpy.run_module("flowboard", run_name="__main__", alter_sys=True)


def _compare(before: Path, after: Path, top: int) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    old = tracemalloc.Snapshot.load(str(before)).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(str(after)).filter_traces(ignore)
    total = sum(s.size for s in new.statistics("filename")) - sum(s.size for s in old.statistics("filename"))
    print(f"traced memory {before.name} -> {after.name}: {total / 1024:+,.0f} KiB")
    for stat in new.compare_to(old, "traceback")[:top]:
        grew = f"{stat.size_diff / 1024:+,.1f} KiB ({stat.count_diff:+,} blocks)"
        print(f"\n{grew}, now {stat.size / 1024:,.0f} KiB")
        for line in stat.traceback.format(limit=FRAMES, most_recent_first=True):
            print("   ", line)


def main() -> None:
    if sys.argv[1:2] == ["--compare"]:
        parser = argparse.ArgumentParser(prog="python -m bench.tracemalloc_serve --compare")
        parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
        parser.add_argument("--top", type=int, default=15)
        args = parser.parse_args()
        _compare(*args.compare, args.top)
        return
    _serve(Path(sys.argv[1]), sys.argv[2:])


if __name__ == "__main__":
    main()

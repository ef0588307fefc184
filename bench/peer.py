"""The peer that ``python -m bench cost`` compares Flowboard with: the ``websockets`` library's
asyncio server and its built-in ``broadcast()``, sending recorded Flowboard frames at a rate.

    python -m bench.peer FRAMES_FILE --rate FRAMES_PER_S

FRAMES_FILE holds one v2 frame per line, recorded from Flowboard's ``/ws`` in the same run, so the
peer's frames have the same sizes and compress alike; they are replayed in a loop with their seq
renumbered (so a replayed frame is never byte-identical to one still in the deflate window).
permessage-deflate is the library default (context takeover, 12-bit window, memLevel 5); a
client that does not offer it gets plain frames. No per-client state, no decoding of anything the
clients send beyond what the library does (pings, closes). Prints ``peer listening on ws://...``.
Bench code only: Flowboard does not depend on ``websockets``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from pathlib import Path

from websockets.asyncio.server import ServerConnection, broadcast, serve


def renumber(frame: str, seq: int) -> str:
    """The frame with its leading seq (``[seq,...``) replaced."""
    return f"[{seq}," + frame.partition(",")[2]


async def run(frames: list[str], rate: float) -> None:
    clients: set[ServerConnection] = set()

    async def handler(connection: ServerConnection) -> None:
        clients.add(connection)
        try:
            await connection.wait_closed()
        finally:
            clients.discard(connection)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"peer listening on ws://127.0.0.1:{port}", flush=True)
        loop = asyncio.get_running_loop()
        interval = 1 / rate
        due = loop.time()
        seq = 0
        while True:
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            broadcast(clients, renumber(frames[seq % len(frames)], seq))
            seq += 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("frames", type=Path)
    parser.add_argument("--rate", type=float, required=True, help="frames per second to every client")
    args = parser.parse_args()
    frames = [line for line in args.frames.read_text().splitlines() if line.startswith("[")]
    if not frames:
        print(f"expected v2 frames, one per line, in {args.frames}; found none", file=sys.stderr)
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(frames, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Record a protocol v2 vector from a running server (``recorded_sim.json``).

One stream as a page sees it: a snapshot, live trades, an hour -> day switch, a market's
detail opened and closed, then a second connection that resumes (``resume=EPOCH:SEQ``).
The summary is the reference decoder's; tests/test_vectors.py checks the browser decoder
against it.

Usage: .venv/bin/python -m flowboard serve --port 0 --rate 20 --seed 7 --db /tmp/v.sqlite3 &
       .venv/bin/python tests/vectors/record_vector.py http://127.0.0.1:PORT [seconds]
"""

from __future__ import annotations

import sys

import orjson
import trio
from make_vectors import write  # type: ignore[import-not-found]
from trio_websocket import open_websocket_url

from flowboard.protocol.decoder import ViewState


async def _collect(ws, frames: list[str], state: ViewState, seconds: float) -> None:  # type: ignore[no-untyped-def]
    with trio.move_on_after(seconds):
        while True:
            text = await ws.get_message()
            frames.append(text)
            state.apply_frame(text)


async def record(base: str, seconds: float) -> None:
    ws_base = base.replace("http://", "ws://", 1)
    frames: list[str] = []
    state = ViewState()
    step = seconds / 5
    async with open_websocket_url(f"{ws_base}/ws?ch=trades,hot,hour,top,today") as ws:
        await _collect(ws, frames, state, step)
        await ws.send_message(orjson.dumps({"op": "sub", "ch": ["day"]}).decode())
        await ws.send_message(orjson.dumps({"op": "unsub", "ch": ["hour"]}).decode())
        await _collect(ws, frames, state, step)
        # Prefer a market outside the hot set: its detail brings its own window and sparkline.
        tape_markets = [row[0] for _, _, row in state.tape]
        cold = [m for m in tape_markets if m not in state.hot]
        ticker = state.markets[(cold or tape_markets)[0]].ticker
        await ws.send_message(orjson.dumps({"op": "detail", "ticker": ticker}).decode())
        await _collect(ws, frames, state, step)
        await ws.send_message(orjson.dumps({"op": "detail", "ticker": None}).decode())
        await _collect(ws, frames, state, step)
    await trio.sleep(0.5)
    resume = f"{state.epoch}:{state.seq}"
    async with open_websocket_url(f"{ws_base}/ws?ch=trades,hot,day,top,today&resume={resume}") as ws:
        await _collect(ws, frames, state, step)
    write(
        "recorded_sim",
        f"Recorded from the simulator: snapshot, live trades, hour->day, detail open/close, resume "
        f"({len(frames)} frames)",
        frames,
    )


def main() -> None:
    base = sys.argv[1].rstrip("/")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    trio.run(record, base, seconds)


if __name__ == "__main__":
    main()

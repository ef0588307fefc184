"""Trade sources as trio tasks: each one sends the raw text of feed messages down a channel.

Every source, simulated or live, emits Kalshi's WebSocket text, so the rest of the
pipeline parses all of them with the same ``decode_message`` + ``trade_from_msg``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
import trio

from flowboard.ingest.kalshi_format import encode_envelope, encode_trade_msg
from flowboard.ingest.simulator import Simulator

#: The subscription id the simulator's messages carry, as if it had subscribed once.
SIMULATOR_SID = 1


@attrs.frozen(slots=True)
class RawMessage:
    """One feed message as it came off the wire, stamped with when it arrived."""

    received_ms: int  # wall clock, Unix ms
    text: str


async def serve_simulator(
    sim: Simulator,
    send: trio.MemorySendChannel[RawMessage],
    *,
    wall_ms: Callable[[], int],
    burst: tuple[float, float] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Play ``sim`` in real time: each trade is sent as Kalshi's current ``trade`` message
    when ``wall_ms()`` reaches its time, with ``seq`` counting up from 1. Runs until cancelled.

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
    for seq in itertools.count(1):
        if base_rate is not None and at_ms >= burst_until_ms:
            sim.set_rate(base_rate)
            base_rate = None
        at_ms, trade = sim.next_trade(at_ms)
        delay_ms = at_ms - wall_ms()
        if delay_ms > 0:
            await trio.sleep(delay_ms / 1000)
        text = encode_envelope(encode_trade_msg(trade), sid=SIMULATOR_SID, seq=seq)
        await send.send(RawMessage(received_ms=wall_ms(), text=text))

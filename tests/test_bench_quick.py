"""The benchmark's measuring core (bench.load) against an in-process server, on the autojump clock.

Not a benchmark: it proves that the clients count bytes by kind, measure latency, decode v2
and pass the view check, in a few virtual seconds. No timing is asserted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from bench.frames import OPCODE_CLOSE, OPCODE_PING, FrameCounter, client_frame, close_code
from bench.load import (
    Group,
    check_views,
    histogram_quantile,
    open_group,
    read_metrics,
    summarize_group,
    v1_kind,
    v2_kind,
)
from flowboard.config import make_config
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime

BASE_MS = 1_795_800_000_000


def virtual_wall_ms() -> int:
    return BASE_MS + round(trio.current_time() * 1000)


@pytest.fixture
async def server(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> AsyncIterator[Runtime]:
    config = make_config(port=0, rate=10.0, seed=42, sim_history=120.0, db=str(tmp_path / "bench.db"))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        yield runtime
        nursery.cancel_scope.cancel()


def _server_frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """A frame as a server writes it (unmasked), with the shortest length encoding."""
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        header = bytes([first, len(payload)])
    elif len(payload) < 65_536:
        header = bytes([first, 126]) + len(payload).to_bytes(2, "big")
    else:
        header = bytes([first, 127]) + len(payload).to_bytes(8, "big")
    return header + payload


# A server's messages: text or binary, whole or in fragments, with pings and closes between them;
# lengths reach past 125 (16-bit length) and, now and then, past 65,535 (64-bit length).
_payload_sizes = st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 65_535, 65_536, 70_000]))
_messages = st.lists(
    st.tuples(st.sampled_from([1, 2]), st.lists(_payload_sizes, min_size=1, max_size=3)), max_size=8
)
_controls = st.lists(
    st.tuples(st.sampled_from([OPCODE_PING, OPCODE_CLOSE]), st.binary(max_size=125)), max_size=8
)


@given(messages=_messages, controls=_controls, data=st.data())
def test_frame_counter_counts_messages_across_any_partial_reads(
    messages: list[tuple[int, list[int]]], controls: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    """Cut anywhere (inside headers, payloads, control frames), the stream gives the same
    message count, every control frame whole and in order, and every wire byte counted."""
    frames: list[bytes] = []
    for index, (opcode, sizes) in enumerate(messages):
        for part, size in enumerate(sizes):
            frames.append(_server_frame(opcode if part == 0 else 0, b"x" * size, fin=part == len(sizes) - 1))
        if index < len(controls):
            frames.append(_server_frame(controls[index][0], controls[index][1], fin=True))
    expected_controls = controls[: len(messages)]
    wire = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    counter = FrameCounter()
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        counter.feed(wire[start:end])
    assert counter.messages == len(messages)
    assert counter.controls == expected_controls
    assert counter.wire_bytes == len(wire)


def test_frame_counter_reads_extended_lengths_and_skips_masking_keys() -> None:
    """16- and 64-bit lengths are read as such; a masked frame's 4-byte key is skipped as header."""
    counter = FrameCounter()
    counter.feed(_server_frame(1, b"a" * 300, fin=True) + _server_frame(2, b"b" * 70_000, fin=True))
    masked_ping = client_frame(OPCODE_PING, b"hello", b"\x01\x02\x03\x04")
    counter.feed(masked_ping + _server_frame(1, b"{}", fin=True))
    assert counter.messages == 3
    assert [opcode for opcode, _ in counter.controls] == [OPCODE_PING]
    assert close_code(b"\x0f\xa0bye") == 4000 and close_code(b"") == 1005


def test_client_frame_refuses_what_a_control_frame_cannot_carry() -> None:
    """A client control frame over 125 bytes is refused with what was expected and what came."""
    with pytest.raises(ValueError, match=r"at most 125 bytes.*got 126"):
        client_frame(OPCODE_PING, b"x" * 126, b"abcd")


def test_histogram_quantile_reads_what_was_observed_between_two_reads() -> None:
    """Quantiles come from the bucket deltas (not the totals since start), as bucket upper bounds;
    a histogram that is absent or saw nothing in between gives None."""
    lag = "flowboard_loop_lag_seconds_bucket"
    before = {f'{lag}{{le="0.005"}}': 500.0, f'{lag}{{le="0.05"}}': 500.0, f'{lag}{{le="+Inf"}}': 500.0}
    after = {f'{lag}{{le="0.005"}}': 590.0, f'{lag}{{le="0.05"}}': 599.0, f'{lag}{{le="+Inf"}}': 600.0}
    name = "flowboard_loop_lag_seconds"
    assert histogram_quantile(before, after, name, 0.5) == 0.005
    assert histogram_quantile(before, after, name, 0.95) == 0.05
    assert histogram_quantile(before, after, name, 1.0) == float("inf")
    assert histogram_quantile(after, after, name, 0.5) is None
    assert histogram_quantile(before, after, "flowboard_coalesce_seconds", 0.5) is None


def test_frames_are_classified_by_kind() -> None:
    """The first v2 frame is the snapshot; later ones by the events they carry; v1 by type."""
    assert v2_kind('[3,["H",{}],["T"]]', first=True) == "snapshot"
    assert v2_kind('[4,["m",1,"X",""],["t",[1,2,3,1,5]]]', first=False) == "trades"
    assert v2_kind('[5,["k",1,2],["w",1,0,0,0,0,0]]', first=False) == "hot"
    assert v2_kind('[6,["c",60000]]', first=False) == "analytics"
    assert v1_kind('{"type": "hot_markets_update", "data": {}}') == "hot_markets_update"


async def test_measuring_clients_count_decode_and_match_the_server(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """v1 and v2 clients, plain and deflate: bytes by kind, latencies, and a passing view check."""
    groups = [
        Group("v1", deflate=False, clients=2),
        Group("v1", deflate=True, clients=2),
        Group("v2", deflate=False, clients=2),
        Group("v2", deflate=True, clients=2),
    ]
    async with trio.open_nursery() as nursery:
        by_group = {g.name: await open_group(nursery, server.url, g, wall_ms=virtual_wall_ms) for g in groups}
        everyone = [c for clients in by_group.values() for c in clients]
        await trio.sleep(2)
        for client in everyone:
            client.measuring = True
        await trio.sleep(10)
        for client in everyone:
            client.measuring = False
        check = await check_views(server.url, by_group["v2 plain"] + by_group["v2 deflate"])
        metrics = await read_metrics(server.url)
        nursery.cancel_scope.cancel()
    summary = {name: summarize_group(clients, 10.0) for name, clients in by_group.items()}
    assert check["ok"] and check["checked"] == 4, check
    for name, group in summary.items():
        assert group["trades_per_client"] > 0, name
        assert group["latency_ms"]["samples"] > 0 and group["latency_ms"]["p50"] >= 0, name
        assert group["snapshot_wire_bytes"] > 0 and group["decode_errors"] == 0, name
    assert "trade" in summary["v1 plain"]["bytes_per_s_per_client_by_kind"]
    assert "trades" in summary["v2 deflate"]["bytes_per_s_per_client_by_kind"]
    assert summary["v2 deflate"]["deflate_negotiated"] == 2 and summary["v2 plain"]["deflate_negotiated"] == 0
    v1_plain = summary["v1 plain"]["bytes_per_s_per_client"]
    assert summary["v1 deflate"]["bytes_per_s_per_client"] < v1_plain
    assert summary["v2 plain"]["bytes_per_s_per_client"] < v1_plain
    assert any(name.startswith("flowboard_frames_sent_total") for name in metrics)

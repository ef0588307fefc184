"""/metrics of the real server: the process figures operators expect next to ours, what the
aggregator holds, and no ``_created`` series."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from flowboard.config import make_config
from flowboard.server.pipeline import feed_message_label, run_server
from flowboard.server.runtime import Runtime

BASE_MS = 1_795_800_000_000


def virtual_wall_ms() -> int:
    return BASE_MS + round(trio.current_time() * 1000)


async def test_metrics_show_the_process_and_what_the_aggregator_holds(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Resident memory, CPU seconds, open descriptors and GC come with the aggregator's held
    trades and remembered ids; no series ends in _created."""
    config = make_config(port=0, rate=20.0, seed=7, sim_history=120.0, db=str(tmp_path / "flowboard.db"))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        await trio.sleep(3)
        async with httpx.AsyncClient(base_url=runtime.url) as http:
            text = (await http.get("/metrics")).text
        nursery.cancel_scope.cancel()

    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    assert samples["process_resident_memory_bytes"] > 10 * 2**20
    assert samples["process_cpu_seconds_total"] > 0
    assert samples["process_open_fds"] > 0
    assert "python_gc_collections_total" in text
    # Two minutes of warm start at 20 trades/s, all in the window and the dedup horizon; the
    # feed runs on while the scrape travels, so no exact figure.
    assert 2_000 < samples["flowboard_aggregator_window_trades"] < 3_000
    assert 2_000 < samples["flowboard_aggregator_remembered_ids"] < 3_000
    assert samples["flowboard_aggregator_tape_trades"] == 200
    assert 0 < samples["flowboard_aggregator_history_trades"] <= 50 * samples["flowboard_aggregator_markets"]
    assert not [name for name in samples if name.endswith("_created")]
    assert "_created" not in text


def test_feed_message_types_beyond_the_known_ones_share_one_label() -> None:
    """A label set lives as long as the process: a feed that sends ever new message types is
    counted under "other", so /metrics does not grow with them; Kalshi's own keep theirs."""
    assert {feed_message_label(f"novel-{index}") for index in range(50)} == {"other"}
    assert [feed_message_label(kind) for kind in ("trade", "ticker", "subscribed", "error")] == [
        "trade",
        "ticker",
        "subscribed",
        "error",
    ]

"""Parlays, hot events and the watchlist through the real server: hypercorn on loopback, the
seeded simulator (which makes parlays), real WebSocket clients folding with the reference decoder,
and the JSON API. Time is trio's autojump clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio.testing

from flowboard.config import make_config
from flowboard.protocol import v2
from flowboard.protocol.decoder import ViewState, expected_summary
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.testing.wsclient import ConnectionClosed, WireClient, open_wire_client

BASE_MS = 1_795_800_000_000


def virtual_wall_ms() -> int:
    return BASE_MS + round(trio.current_time() * 1000)


@pytest.fixture
async def server(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> AsyncIterator[Runtime]:
    config = make_config(port=0, rate=20.0, seed=7, sim_history=300.0, db=str(tmp_path / "flowboard.db"))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        yield runtime
        nursery.cancel_scope.cancel()


def ws_url(runtime: Runtime, query: str = "") -> str:
    return runtime.url.replace("http://", "ws://") + "/ws" + query


async def fold_for(client: WireClient, view: ViewState, seconds: float) -> list[list[object]]:
    """Fold frames for ``seconds``; the frames, parsed."""
    frames = []
    with trio.move_on_after(seconds):
        while True:
            text = (await client.receive()).text
            view.apply_frame(text)
            frames.append(orjson.loads(text))
    return frames


async def fold_until_current(runtime: Runtime, client: WireClient, view: ViewState) -> None:
    session = next(iter(runtime.hub.clients)).session
    while view.seq != runtime.hub.seq or session.has_pending(runtime.wall_ms()):
        view.apply_frame((await client.receive()).text)


def expected(
    runtime: Runtime, view: ViewState, channels: frozenset[str], *, parlays: bool, watch: tuple[str, ...]
) -> dict[str, object]:
    return expected_summary(
        runtime.agg,
        channels=channels,
        detail=None,
        tape_len=len(view.tape),
        detail_len=50,
        parlays=parlays,
        watch=watch,
    )


def parlay_tickers(runtime: Runtime) -> set[str]:
    agg = runtime.agg
    return {agg.ticker(m) for m in range(agg.markets_count()) if agg.is_parlay(m)}


async def test_a_view_with_events_parlays_and_a_watchlist_matches_the_server(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """A client asking for hot events, parlays included, and two pinned markets (one not traded
    yet) folds to exactly the server's state; after switching parlays off and changing its
    watchlist by command it still does, and its rankings then leave parlays out."""
    agg = server.agg
    quiet = next(
        agg.ticker(m) for m in range(agg.markets_count()) if agg.window(m).usd > 0 and m not in agg.hot(True)
    )
    channels = frozenset({"trades", "hot", "top", "events"})
    watch = (quiet, "KXNOTYET-1")
    client = await open_wire_client(
        ws_url(server, f"?ch=trades,hot,top,events&parlays=1&watch={quiet},KXNOTYET-1")
    )
    view = ViewState()
    await fold_for(client, view, 20)
    await fold_until_current(server, client, view)
    actual = view.summary()
    actual.pop("seq")
    assert actual == expected(server, view, channels, parlays=True, watch=watch)
    assert actual["watch"] and actual["watch"][0]["ticker"] == quiet  # type: ignore[index]

    hot_with = set(agg.hot(True))
    others = [agg.ticker(m) for m in agg.hot(False)[:2]]
    await client.send_text(orjson.dumps({"op": "parlays", "on": False}).decode())
    await client.send_text(orjson.dumps({"op": "watch", "tickers": others}).decode())
    frames = await fold_for(client, view, 10)
    await fold_until_current(server, client, view)
    assert any(event == ["P", 0] for frame in frames for event in frame[1:])  # type: ignore[index]
    actual = view.summary()
    actual.pop("seq")
    assert actual == expected(server, view, channels, parlays=False, watch=tuple(others))
    assert not {row[0] for row in actual["top"]} & parlay_tickers(server)  # type: ignore[index]
    assert hot_with, "the simulator's view with parlays is not empty"
    await client.aclose()


async def test_a_watchlist_past_the_bound_or_with_bad_tickers_gets_an_error(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """More than MAX_WATCHED markets, or a ticker that is no string, is answered with an error
    frame and the connection goes on; in the URL it closes the connection with a reason."""
    client = await open_wire_client(ws_url(server))
    await client.receive()
    too_many = [f"KX-{index}" for index in range(v2.MAX_WATCHED + 1)]
    await client.send_text(orjson.dumps({"op": "watch", "tickers": too_many}).decode())
    await client.send_text(orjson.dumps({"op": "watch", "tickers": [7]}).decode())
    await client.send_text(orjson.dumps({"op": "parlays", "on": "yes"}).decode())
    errors: list[str] = []
    with trio.move_on_after(5):
        while len(errors) < 3:
            frame = orjson.loads((await client.receive()).text)
            errors.extend(event[1] for event in frame[1:] if event[0] == "e")
    assert errors == [
        f"'watch' takes at most {v2.MAX_WATCHED} markets, got {v2.MAX_WATCHED + 1}",
        "'watch' expects \"tickers\": a list of market tickers",
        "'parlays' expects \"on\": true or false",
    ]
    await client.aclose()
    refused = await open_wire_client(ws_url(server, "?parlays=maybe"))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await refused.receive()
    await refused.aclose()
    assert closed.value.code == 1008 and closed.value.reason == "parlays must be 0 or 1, got 'maybe'"


async def test_the_api_ranks_events_and_leaves_parlays_out_unless_asked(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """/api/events/hot ranks events by window $ volume with their markets; /api/markets/hot,
    /api/trades/top and /api/events/hot leave parlays out unless ?parlays=1; a bad flag is a 400."""
    await trio.sleep(3)
    agg = server.agg
    parlays = parlay_tickers(server)
    async with httpx.AsyncClient(base_url=server.url) as http:
        events = (await http.get("/api/events/hot")).json()["events"]
        events_all = (await http.get("/api/events/hot", params={"parlays": "1"})).json()["events"]
        hot = (await http.get("/api/markets/hot")).json()["markets"]
        hot_all = (await http.get("/api/markets/hot", params={"parlays": "1"})).json()["markets"]
        top = (await http.get("/api/trades/top")).json()["trades"]
        top_all = (await http.get("/api/trades/top", params={"parlays": "1"})).json()["trades"]
        bad = await http.get("/api/events/hot", params={"parlays": "yes"})
    assert [e["event_ticker"] for e in events] == [e.event_ticker for e in agg.hot_events()]
    assert [e["rank"] for e in events] == list(range(1, len(events) + 1))
    first = events[0]
    assert first["market_count"] >= len(first["markets"]) >= 1
    assert first["window"]["trades"] == agg.hot_events()[0].trades
    assert not any(m["parlay"] for e in events for m in e["markets"])
    assert any(m["parlay"] for e in events_all for m in e["markets"]), "the simulator's parlays trade"
    assert not {m["ticker"] for m in hot} & parlays and {m["ticker"] for m in hot_all} & parlays
    assert not {t["ticker"] for t in top} & parlays
    assert [t["trade_id"] for t in top_all] == [t.trade_id for t in agg.top_trades(True)]
    assert bad.status_code == 400 and "parlays must be 0 or 1" in bad.json()["error"]

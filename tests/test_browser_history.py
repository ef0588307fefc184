"""The drawer's price history and the CSV downloads in real Chromium against the real server on
the simulator (the fixtures of ``test_browser``): the candles the page draws are the API's, the
newest one extended by the live detail trades stays equal to the store's, the 7 d toggle asks
for hour candles, and both downloads are CSV of the right trades."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import pytest
import test_browser
from test_browser import Console, Server, _wait

from flowboard.model import PRICE_DECIMALS, USD_DECIMALS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# test_browser's fixtures: its real server on the simulator, Chromium, a page on the dashboard.
server = test_browser.server
browser = test_browser.browser
page = test_browser.page

PAGE_CANDLES = """() => {
  const h = flowboard.historyPanel.history;
  return h === null ? null : h.candles.map((c) => [c.start, c.open, c.high, c.low, c.close, c.usd, c.trades]);
}"""


def _units(text: str, decimals: int) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 10**decimals + int((frac + "0" * decimals)[:decimals] or "0")


def api_candles(server: Server, ticker: str, interval: str, since: int) -> list[list[int]]:
    body = server.api(f"/api/markets/{ticker}/candles?interval={interval}&since={since}")
    return [
        [
            c["start_ms"],
            _units(c["open"], PRICE_DECIMALS),
            _units(c["high"], PRICE_DECIMALS),
            _units(c["low"], PRICE_DECIMALS),
            _units(c["close"], PRICE_DECIMALS),
            _units(c["usd_volume"], USD_DECIMALS),
            c["trades"],
        ]
        for c in body["candles"]
    ]


def open_busiest_market(pg: Any) -> str:
    card = pg.locator("#hot .card[data-ticker]").first
    ticker = str(card.get_attribute("data-ticker"))
    card.click()
    pg.locator("#drawer").wait_for(state="visible")
    pg.wait_for_function(
        "Number(document.getElementById('dr-candles').dataset.candles || 0) > 0", timeout=15_000
    )
    return ticker


def test_drawer_draws_the_stores_candles_and_extends_them_live(
    page: tuple[Any, Console], server: Server
) -> None:
    """Opening a market draws its 24 h of 1m candles as the API gives them; as trades arrive the
    newest candle grows, and at a moment when nothing is in flight it equals the store's."""
    pg, _ = page
    ticker = open_busiest_market(pg)
    since = int(time.time() * 1000) - 24 * 3_600_000
    first = pg.evaluate(PAGE_CANDLES)
    assert first, "the page drew no candles"
    trades_then = sum(c[6] for c in first)
    _wait(
        pg, lambda: sum(c[6] for c in pg.evaluate(PAGE_CANDLES)) > trades_then, 30, "a live trade folded in"
    )
    for _attempt in range(100):
        before = pg.evaluate(PAGE_CANDLES)
        stored = api_candles(server, ticker, "1m", since)
        after = pg.evaluate(PAGE_CANDLES)
        if before == after == stored:
            break
        pg.wait_for_timeout(150)
    else:
        pytest.fail(f"the page's candles never equalled the store's: {before[-3:]} vs {stored[-3:]}")
    label = pg.locator("#dr-candles").get_attribute("aria-label")
    assert label is not None and label.startswith(f"{len(stored)} 1m candles")


def test_the_7d_toggle_shows_hour_candles(page: tuple[Any, Console], server: Server) -> None:
    """The 7 d button asks for 1h candles over a week; its choice is kept for the next market."""
    pg, _ = page
    ticker = open_busiest_market(pg)
    pg.locator('#dr-span button[data-span="7d"]').click()
    pg.wait_for_function("flowboard.historyPanel.history?.intervalMs === 3600000", timeout=10_000)
    assert pg.locator('#dr-span button[data-span="7d"]').get_attribute("aria-checked") == "true"
    since = int(time.time() * 1000) - 7 * 24 * 3_600_000
    for _attempt in range(100):
        shown = pg.evaluate(PAGE_CANDLES)
        if shown == api_candles(server, ticker, "1h", since):
            break
        pg.wait_for_timeout(150)
    else:
        pytest.fail("the page's hour candles never equalled the store's")
    assert pg.evaluate("localStorage.getItem('flowboard.historySpan')") == "7d"
    pg.locator('#dr-span button[data-span="24h"]').click()
    pg.wait_for_function("flowboard.historyPanel.history?.intervalMs === 60000", timeout=10_000)


def _download(pg: Any, selector: str) -> tuple[str, list[list[str]]]:
    with pg.expect_download() as info:
        pg.locator(selector).click()
    download = info.value
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text())))
    return download.suggested_filename, rows


def test_the_drawer_downloads_the_markets_trades(page: tuple[Any, Console], server: Server) -> None:
    """The drawer's download is the market's stored trades as CSV, named after the market."""
    pg, _ = page
    ticker = open_busiest_market(pg)
    name, rows = _download(pg, "#dr-csv")
    assert name.startswith(f"flowboard-{ticker}-") and name.endswith(".csv")
    assert rows[0][:4] == ["trade_id", "time_utc", "ts_ms", "ticker"]
    assert len(rows) > 1 and {row[3] for row in rows[1:]} == {ticker}


def test_the_tape_download_follows_the_tapes_filter(page: tuple[Any, Console], server: Server) -> None:
    """With a market typed into the tape's filter and a $ floor, the tape's download holds that
    market's trades of at least the floor only."""
    pg, _ = page
    ticker = str(pg.locator("#hot .card[data-ticker]").first.get_attribute("data-ticker"))
    pg.fill("#f-text", ticker.lower())
    pg.fill("#f-min", "0.5")
    name, rows = _download(pg, "#tape-csv")
    assert name.startswith("flowboard-trades-")
    header, body = rows[0], rows[1:]
    assert body, "the filter passed no stored trade"
    assert {row[header.index("ticker")] for row in body} == {ticker}
    assert all(_units(row[header.index("usd_volume")], USD_DECIMALS) >= 50_000_000 for row in body)

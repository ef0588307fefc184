"""The trader panels (alerts, flows, movers) in real Chromium against the real server.

The server runs with a $1 whale floor (``FLOWBOARD_ALERT_FLOOR``) so that the simulator's
trades raise alerts within seconds; everything else is ``tests/test_browser.py``'s setup.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

# The browser suite's fixtures and helpers: one Chromium, a page with a clean console.
from test_browser import Console, Server, _require_chromium, _wait, browser, page  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _require_chromium()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLOWBOARD_ALERT_FLOOR", "1")
        env.setenv("FLOWBOARD_ACCUMULATION_USD", "50")
        srv = Server(tmp_path_factory.mktemp("trader") / "flowboard.sqlite3", rate=4)
        srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_the_page_subscribes_and_shows_alerts_flows_and_movers(
    page: tuple[Any, Console],  # noqa: F811
    server: Server,
) -> None:
    """Once live the page subscribes to the trader channels; the alert feed, the flows table and
    the movers panel show the server's lists; a flows header sorts; the movers toggle switches
    period; a row opens the market's drawer."""
    pg, _ = page
    _wait(
        pg, lambda: pg.evaluate("['alerts','flows','movers'].every((c) => flowboard.state.channels.has(c))")
    )
    _wait(pg, lambda: pg.locator("#alerts li").count() >= 1, what="an alert")
    _wait(pg, lambda: pg.locator("#flows-body tr").count() >= 2, what="flows")
    # The feed is the state's alerts, newest first; the API agrees on what they are.
    # (Alerts keep coming with a $1 floor: compare at a moment the page has painted the last one.)
    same = """() => {
      const shown = [...document.querySelectorAll('#alerts li')].map((li) => Number(li.dataset.usd));
      return JSON.stringify(shown) === JSON.stringify(flowboard.state.alerts.map((a) => a.usd));
    }"""
    _wait(pg, lambda: pg.evaluate(same), what="the feed to show the state's alerts")
    shown = pg.evaluate("document.querySelectorAll('#alerts li').length")
    api_ids = {alert["id"] for alert in server.api("/api/alerts?limit=1000")["alerts"]}
    assert len(api_ids) >= shown

    # Flows: largest $ first; a click on "Contracts" sorts by contracts.
    def column(index: int) -> list[str]:
        return pg.evaluate(
            f"[...document.querySelectorAll('#flows-body tr')].map((tr) => tr.children[{index}].textContent)"
        )

    usd = pg.evaluate("flowboard.state.flows.map((f) => f[2])")
    assert usd == sorted(usd, reverse=True)
    pg.locator("#flows-table th[data-sort='contracts']").click()
    contracts = pg.evaluate("[...flowboard.state.flows].map((f) => f[3]).sort((a, b) => b - a)")
    assert len(column(3)) == len(contracts)
    assert pg.locator("#flows-table th[data-sort='contracts']").get_attribute("aria-sort") == "descending"
    first = pg.evaluate(
        "flowboard.state.markets.get([...flowboard.state.flows].sort((a, b) => b[3] - a[3])[0][0]).ticker"
    )
    assert column(0)[0] == first

    # Movers: the 1 h period's list when toggled.
    pg.locator("#movers-period button[data-period='1h']").click()
    assert pg.locator("#movers-period button[data-period='1h']").get_attribute("aria-checked") == "true"
    assert pg.locator("#movers li").count() == pg.evaluate("(flowboard.state.movers.get('1h') ?? []).length")

    # A flow row opens the drawer of its market.
    ticker = pg.locator("#flows-body tr").first.get_attribute("data-ticker")
    pg.locator("#flows-body tr").first.click()
    pg.locator("#drawer").wait_for(state="visible")
    assert pg.locator("#drawer").get_attribute("data-ticker") == ticker


def test_the_viewers_threshold_hides_smaller_whales_and_is_kept(
    page: tuple[Any, Console],  # noqa: F811
    server: Server,
) -> None:
    """A whale threshold typed on the page hides whale alerts below it (accumulations stay) and
    survives a reload (localStorage)."""
    pg, _ = page
    _wait(pg, lambda: pg.locator("#alerts li[data-kind='whale']").count() >= 1, what="a whale alert")
    pg.locator("#al-min").fill("100000000")
    assert pg.locator("#alerts li[data-kind='whale']").count() == 0
    pg.reload()
    pg.wait_for_function("document.documentElement.dataset.ready === '1'", timeout=15_000)
    assert pg.locator("#al-min").input_value() == "100000000"
    _wait(pg, lambda: pg.evaluate("flowboard.state.alerts.length") > 0, what="alerts after the reload")
    assert pg.locator("#alerts li[data-kind='whale']").count() == 0
    pg.locator("#al-min").fill("")
    _wait(pg, lambda: pg.locator("#alerts li[data-kind='whale']").count() >= 1, what="whales shown again")


def test_notifications_are_opt_in_and_only_while_hidden(
    page: tuple[Any, Console],  # noqa: F811
    server: Server,
) -> None:
    """The button asks for permission; with it, an alert that arrives while the tab is hidden is
    a notification, and one that arrives while it is visible is not."""
    pg, _ = page
    pg.evaluate("""() => {
      window.__shown = [];
      window.Notification = class {
        constructor(title, options) { window.__shown.push([title, options.body]); }
      };
      window.Notification.permission = "default";
      window.Notification.requestPermission = async () => (window.Notification.permission = "granted");
    }""")
    assert pg.locator("#al-notify").get_attribute("aria-pressed") == "false"
    pg.locator("#al-notify").click()
    _wait(pg, lambda: pg.locator("#al-notify").get_attribute("aria-pressed") == "true", what="permission")

    def inject_alert(usd: int) -> None:
        # A live alert ("A" mode 1) for a market the page knows, at the page's current seq.
        pg.evaluate(
            """(usd) => { const s = flowboard.state; const id = s.markets.keys().next().value;
                 const ts = Date.now() - s.t0;
                 flowboard.receive(JSON.stringify([s.seq, ["A", 1, [id, 0, 1, usd, 100, 1, ts, ts]]])); }""",
            usd,
        )

    inject_alert(123 * 10**8)
    pg.wait_for_timeout(400)
    assert pg.evaluate("window.__shown") == [], "visible: no notification"
    pg.evaluate("Object.defineProperty(document, 'hidden', { configurable: true, get: () => true })")
    inject_alert(456 * 10**8)

    def bodies() -> list[str]:
        return [body for _, body in pg.evaluate("window.__shown")]

    # The server's own alerts (a $1 floor here) may come too while hidden: they are notified as well.
    _wait(pg, lambda: any("$456" in body for body in bodies()), what="the notification")
    assert not any("$123" in body for body in bodies())
    assert all(title.startswith(("Whale · ", "Accum. · ")) for title, _ in pg.evaluate("window.__shown"))
    assert json.loads(pg.evaluate("JSON.stringify(localStorage.getItem('flowboard.alertNotify'))")) == "1"

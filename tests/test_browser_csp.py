"""The page under its real Content-Security-Policy in Chromium: it loads, streams, opens a
market's drawer, and the browser reports no violation (test_browser.py bypasses the CSP, because
Playwright's wait_for_function needs eval)."""

from __future__ import annotations

from typing import Any

import pytest
from test_browser import Console, Server, _wait, browser, server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_page_works_under_its_csp_without_violations(browser: Any, server: Server) -> None:  # noqa: F811
    """The inline bootstrap script runs (by hash), modules, styles, the favicon and the
    WebSocket load, and the drawer opens: no CSP violation, no error in the console."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    console = Console(pg)
    violations: list[str] = []
    pg.on("console", lambda msg: violations.append(msg.text) if "Security Policy" in msg.text else None)
    try:
        response = pg.goto(server.url + "/")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        _wait(pg, lambda: pg.evaluate("document.documentElement.dataset.ready === '1'"), 15, "page ready")
        _wait(pg, lambda: pg.evaluate("document.querySelectorAll('#tape .trow').length >= 5"), 15, "tape")
        pg.locator("#hot .card[data-ticker]").first.click()
        pg.locator("#drawer").wait_for(state="visible")
        _wait(pg, lambda: pg.evaluate("document.querySelectorAll('#dr-trades li').length > 0"), 10, "drawer")
    finally:
        context.close()
    assert violations == []
    assert console.errors == []

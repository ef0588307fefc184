"""The HTTP side under bad and hostile requests: no 5xx, errors in our words, the headers
browsers need (security, caching), and a /readyz that names no internals.

The fuzz test drives the real server on a loopback port from a sync Hypothesis test, so the
server runs in a thread of its own (real time, a real SQLite file, the simulator).
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from functools import partial
from typing import cast
from urllib.parse import quote, urlencode

import attrs
import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import REAL_TICKERS

from flowboard.aggregate.aggregator import Aggregator
from flowboard.config import Config, make_config
from flowboard.server import page_policy
from flowboard.server.app import create_app
from flowboard.server.hub import Hub
from flowboard.server.metrics import Metrics
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.store import StoreStatistics
from flowboard.testing.wsclient import ConnectionClosed, open_wire_client


@attrs.frozen
class ServerInThread:
    url: str
    runtime: Runtime
    token: trio.lowlevel.TrioToken


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInThread]:
    """One real server for the module, in its own thread and trio run."""
    db = tmp_path_factory.mktemp("http") / "flowboard.db"
    config = make_config(port=0, rate=20.0, seed=3, sim_history=120.0, db=str(db))
    started: queue.Queue[ServerInThread | BaseException] = queue.Queue(1)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            runtime: Runtime = await nursery.start(partial(run_server, config))
            started.put(ServerInThread(runtime.url, runtime, trio.lowlevel.current_trio_token()))

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the test thread, which fails with it
            started.put(exc)

    thread = threading.Thread(target=run, name="flowboard-server", daemon=True)
    thread.start()
    server = started.get(timeout=30)
    if isinstance(server, BaseException):
        raise server
    yield server
    trio.from_thread.run_sync(server.runtime.request_stop, trio_token=server.token)
    thread.join(timeout=15)
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def http(live_server: ServerInThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=10) as client:
        yield client


def _http_routes() -> list[str]:
    """Every route the app has, as its rule (``/api/markets/<ticker>/trades``); the WebSocket
    ones too, asked for as plain HTTP."""
    app = create_app(_unstarted_runtime())
    return sorted({rule.rule for rule in app.url_map.iter_rules()})


def _unstarted_runtime() -> Runtime:
    """A runtime that is never started: enough to build the app and ask about readiness."""
    # No hub: neither building the routes nor readiness uses it.
    return Runtime(
        config=Config(), agg=Aggregator(), hub=cast(Hub, None), metrics=Metrics(), wall_ms=lambda: 0
    )


ROUTES = _http_routes()
#: Parameter names the routes read, and a few they do not.
PARAMETER_NAMES = (
    *("limit", "before", "before_id", "mode", "ch", "resume", "detail", "x", ""),
    *("interval", "since", "until", "q", "category", "min_usd"),
)

any_text = st.text(max_size=300)
integers_as_text = st.integers(min_value=-(10**30), max_value=10**30).map(str)
path_values = st.one_of(any_text, st.sampled_from(REAL_TICKERS), integers_as_text, st.just("a" * 300))
query_values = st.one_of(
    any_text,
    integers_as_text,
    st.sampled_from(("hour", "day", "0", "1", "1000", "1001", "²", "٣", "9" * 5000, "1e3", " 1")),
    st.sampled_from(("1m", "1h", "0.5", "9" * 16, ".")),
)


def _fill(rule: str, values: list[str]) -> str:
    """The rule with each <variable> replaced by a value, percent-encoded like a client would."""
    parts = rule.split("/")
    filled = []
    for part in parts:
        if part.startswith("<") and part.endswith(">"):
            filled.append(quote(values.pop() if values else "", safe=""))
        else:
            filled.append(part)
    return "/".join(filled)


@settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rule=st.sampled_from(ROUTES),
    path_parts=st.lists(path_values, min_size=2, max_size=2),
    params=st.lists(st.tuples(st.sampled_from(PARAMETER_NAMES), query_values), max_size=4),
    method=st.sampled_from(("GET", "GET", "GET", "HEAD", "POST")),
)
def test_no_request_gets_a_5xx(
    http: httpx.Client, rule: str, path_parts: list[str], params: list[tuple[str, str]], method: str
) -> None:
    """Any path and parameters on any route get a 2xx, 3xx or 4xx answer, never a 5xx."""
    response = http.request(method, _fill(rule, path_parts), params=params)
    assert response.status_code < 500, (response.status_code, response.text[:300])


def test_a_before_beyond_64_bits_is_a_400_in_our_words(http: httpx.Client) -> None:
    """A `before=` too big for the store's 64-bit times is refused, saying what range it takes."""
    response = http.get("/api/markets/X/trades", params={"before": "9223372036854775808"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "before must be a time in Unix ms from 0 to 9223372036854775807" in error
    assert "'9223372036854775808'" in error


def test_the_largest_before_is_taken(http: httpx.Client) -> None:
    """The edge of the range is a valid cursor (an empty page for an unknown market)."""
    response = http.get("/api/markets/X/trades", params={"before": str(2**63 - 1)})
    assert response.status_code == 200
    assert response.json() == {"ticker": "X", "trades": []}


@pytest.mark.parametrize(
    ("query", "leak"),
    [
        ({"limit": "²"}, "invalid literal"),
        ({"limit": "9" * 5000}, "set_int_max_str_digits"),
        ({"before": "9" * 5000}, "set_int_max_str_digits"),
    ],
    ids=["superscript-two", "5000-digit-limit", "5000-digit-before"],
)
def test_bad_numbers_are_explained_without_python_internals(
    http: httpx.Client, query: dict[str, str], leak: str
) -> None:
    """A number the API cannot take gets a 400 saying what was expected and what came (cut
    short), never Python's own message."""
    path = "/api/markets/X/trades" if "before" in query else "/api/trades/recent"
    response = http.get(path, params=query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert leak not in error
    assert " must be " in error and ", got " in error
    assert len(error) < 200


def test_a_control_character_in_a_trade_id_cursor_is_a_400(http: httpx.Client) -> None:
    """PostgreSQL cannot store NUL in text: a cursor with one is refused before the store."""
    response = http.get("/api/markets/X/trades", params={"before": "1", "before_id": "a\x00b"})
    assert response.status_code == 400
    assert "before_id must be 1 to 200 printable characters" in response.json()["error"]


def test_an_over_long_file_name_is_a_404(http: httpx.Client) -> None:
    """A file name longer than the file system allows names no file: 404, not 500."""
    response = http.get("/" + "a" * 256)
    assert response.status_code == 404


def test_page_and_files_carry_security_headers(http: httpx.Client) -> None:
    """The page and its files say: our origin only (inline code by hash), no sniffing, no framing."""
    for path in ("/", "/app.js", "/style.css"):
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
        assert "'unsafe-inline'" not in csp


def test_page_is_revalidated_and_api_is_never_stored(http: httpx.Client) -> None:
    """The page and its files: `no-cache` with a validator that answers 304 when unchanged, so
    an upgrade shows at the next load; JSON and metrics: `no-store`."""
    page = http.get("/")
    assert page.headers["Cache-Control"] == "no-cache"
    assert "max-age" not in page.headers["Cache-Control"]
    again = http.get("/", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status_code == 304
    assert http.get("/app.js").headers["Cache-Control"] == "no-cache"
    for path in ("/api/stats", "/api/markets/hot", "/readyz", "/healthz", "/metrics", "/api/trades/top"):
        assert http.get(path).headers["Cache-Control"] == "no-store", path


def test_csp_hashes_the_inline_script_and_handlers() -> None:
    """Inline code is allowed by its hash only; a page without any gets no hash at all."""
    page = "<script>let a = 1;</script><script src='x.js'></script><form onsubmit=\"return false\">"
    csp = page_policy.content_security_policy(page)
    script_src = next(d for d in csp.split("; ") if d.startswith("script-src "))
    # sha256 of "let a = 1;" and of "return false", base64.
    assert "'sha256-xY6QKfH9PRsQnLz56nj6MBwiK5oHg+im1Jkpdp1x/Ck='" in script_src
    assert "'unsafe-hashes' 'sha256-GZIcz60Uwd6wT3vaYke/atSr53TehbYAPepOa3d03Vw='" in script_src
    assert page_policy.content_security_policy("<p>").count("sha256") == 0


@attrs.frozen
class _StoreWithError:
    """Stands in for a store whose writes fail with an error naming the file."""

    error: str

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            queued=1234,
            written_total=0,
            batches=0,
            failures=3,
            dropped=0,
            rejected=0,
            last_error=self.error,
            healthy=False,
            last_commit_ms=None,
        )


def test_readiness_says_which_part_in_plain_words() -> None:
    """/readyz names the part that is not ready; the database's path and error stay in the log."""
    runtime = _unstarted_runtime()
    runtime.not_ready.clear()
    error = "SQLite /srv/secret/flowboard.db: write failed: disk I/O error"
    runtime.store = _StoreWithError(error)  # type: ignore[assignment]
    problems = runtime.readiness_problems()
    assert problems == ["the database is failing or slow: 1,234 trades waiting to be written"]
    assert not any("/srv/secret" in p or "I/O" in p for p in problems)


def _handshake_status(url: str, target: str) -> int:
    """The HTTP status a WebSocket handshake for ``target`` gets (101 when upgraded)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, f"closed without an answer to {target!r}"
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(("/ws", "/ws/stream")),
    params=st.lists(
        st.tuples(st.sampled_from(("ch", "resume", "detail", "x")), st.one_of(query_values, st.just("a:²"))),
        max_size=3,
    ),
)
def test_no_websocket_handshake_gets_a_5xx(
    live_server: ServerInThread, path: str, params: list[tuple[str, str]]
) -> None:
    """Any query on either stream is upgraded (101) or refused with a 4xx, never a 5xx."""
    query = urlencode(params)
    status = _handshake_status(live_server.url, path + ("?" + query if query else ""))
    assert status == 101 or 400 <= status < 500, (status, params)


@pytest.mark.parametrize("resume", ["a:²", "a:" + "9" * 5000], ids=["superscript-two", "5000-digits"])
def test_a_resume_seq_that_is_no_integer_is_no_5xx(live_server: ServerInThread, resume: str) -> None:
    """A resume seq int() refuses is bad input: upgraded and closed with 1008 and a reason."""
    url = live_server.url.replace("http://", "ws://") + "/ws?" + urlencode({"resume": resume})

    async def closed_with() -> ConnectionClosed:
        client = await open_wire_client(url)
        try:
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                await client.receive()
        finally:
            await client.aclose()
        return closed.value

    closed = trio.run(closed_with)
    assert closed.code == 1008
    assert closed.reason is not None and closed.reason.startswith("resume must be EPOCH:SEQ, got ")

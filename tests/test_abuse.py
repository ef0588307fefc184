"""Abuse: command floods, connection hoarding, foreign Origins, hostile v1 messages, log floods.

The pure limiters are tested with plain numbers for time; the rest through the real server on
loopback with trio's autojump clock (as in test_server.py).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import attrs
import httpx
import orjson
import pytest
import trio

from flowboard.config import make_config, parse_argv
from flowboard.errors import ConfigError, ProtocolError
from flowboard.limits import ConnectionCounter, TokenBucket
from flowboard.logs import ThrottledLog, suppressed_lines
from flowboard.protocol import v1, v2
from flowboard.server.guards import RESERVED_FILES, connection_limit, origin_allowed
from flowboard.server.listener import PatientListener
from flowboard.server.metrics import Metrics
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.testing.wsclient import ConnectionClosed, WireClient, open_wire_client

BASE_MS = 1_795_800_000_000


def virtual_wall_ms() -> int:
    return BASE_MS + round(trio.current_time() * 1000)


# -- pure parts ------------------------------------------------------------------------------


def test_token_bucket_passes_a_burst_then_the_rate() -> None:
    """A full bucket passes `burst` at once; then one per 1/rate seconds; a quiet spell refills it
    up to `burst`, never beyond; a clock that goes back refills nothing."""
    bucket = TokenBucket(rate_per_s=2, burst=3)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(10.4)
    assert bucket.take(10.5)
    assert not bucket.take(10.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(50.0)
    assert not bucket.take(100.0, cost=1)
    assert bucket.take(105.0, cost=3)


def test_connection_counter_limits_in_all_and_per_address() -> None:
    """Refusals name the limit reached; closing frees the place."""
    counter = ConnectionCounter(max_total=3, max_per_address=2)
    for address in ("a", "a", "b"):
        assert counter.refusal(address) is None
        counter.opened(address)
    assert counter.refusal("c") == "the server is at its limit of 3 connections; try again later"
    counter.closed("b")
    assert counter.refusal("a") == "too many connections from your address (limit 2)"
    assert counter.refusal("c") is None
    counter.closed("a")
    counter.closed("a")
    assert counter.count("a") == 0 and counter.total == 0
    assert ConnectionCounter(0, 0).refusal("a") is None


def test_connection_limit_leaves_room_for_other_files() -> None:
    """The limit never exceeds what the open-files limit leaves for connections."""
    assert connection_limit(4000, 1024) == 960
    assert connection_limit(100, 20000) == 100
    assert connection_limit(0, 20000) == 19936
    assert connection_limit(4000, 10) == 1


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "dash.example:8000", (), True),
        ("http://dash.example:8000", "dash.example:8000", (), True),
        ("https://dash.example", "dash.example", (), True),
        ("https://DASH.example:443", "dash.example", (), True),
        ("http://[::1]:8000", "[::1]:8000", (), True),
        ("http://evil.example", "dash.example:8000", (), False),
        ("http://dash.example:9000", "dash.example:8000", (), False),
        ("null", "dash.example", (), False),
        ("http://evil.example", "dash.example", ("*",), True),
        ("https://ops.example", "dash.example", ("https://ops.example",), True),
        ("http://ops.example", "dash.example", ("https://ops.example",), False),
        ("https://ops.example:8443", "dash.example", ("https://ops.example:8443",), True),
    ],
)
def test_origin_rules(origin: str | None, host: str, allowed: tuple[str, ...], expected: bool) -> None:
    """Own host (any scheme, default ports explicit), listed origins by scheme, `*`, or no Origin."""
    assert origin_allowed(origin, host, allowed) is expected


def test_allowed_origins_flag_is_validated() -> None:
    """A value that is not an origin stops start-up with one line naming it."""
    _, config = parse_argv(["serve", "--allowed-origins", "https://a.example, http://b.example:8080/"])
    assert config.server.allowed_origins == ("https://a.example", "http://b.example:8080")
    with pytest.raises(ConfigError, match="expected \\* or origins like"):
        parse_argv(["serve", "--allowed-origins", "a.example"])


def test_deeply_nested_v1_message_is_bad_input() -> None:
    """'[' * 60000 is refused like any invalid JSON, not with a RecursionError (v2's parser has
    a depth limit of its own)."""
    with pytest.raises(ProtocolError, match="nested too deeply"):
        v1.parse_client_message("[" * 60000)
    with pytest.raises(ProtocolError, match="invalid JSON"):
        v2.parse_command("[" * 60000)


@attrs.define
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttled_log_lets_a_burst_through_then_one_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """First `burst` lines, then one per interval that says how many were held back; the held
    back lines are counted for /metrics."""
    clock = FakeClock()
    logger = logging.getLogger("test.throttle")
    throttled = ThrottledLog(logger, "test-source", burst=3, interval_s=10, clock=clock)
    before = suppressed_lines().get("test-source", 0)
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        for n in range(1000):
            throttled.warning("bad input %d", n)
        clock.now = 10.0
        throttled.warning("bad input %d", 1000)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "bad input 0",
        "bad input 1",
        "bad input 2",
        "bad input 1000 (and 997 more like it since the last one logged)",
    ]
    assert suppressed_lines()["test-source"] - before == 997
    rendered = Metrics().render().decode()
    count = suppressed_lines()["test-source"]
    assert f'flowboard_log_lines_suppressed_total{{source="test-source"}} {count}.0' in rendered


# -- through the server ----------------------------------------------------------------------


@pytest.fixture
async def server(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> AsyncIterator[Runtime]:
    config = make_config(
        port=0,
        rate=20.0,
        seed=7,
        sim_history=60.0,
        db=str(tmp_path / "flowboard.db"),
        command_rate=2.0,
        command_burst=5,
        max_connections=6,
        max_connections_per_ip=4,
        allowed_origins=("https://ops.example",),
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run_server, config, wall_ms=virtual_wall_ms))
        yield runtime
        nursery.cancel_scope.cancel()


def ws_url(runtime: Runtime, path: str = "/ws") -> str:
    return runtime.url.replace("http://", "ws://") + path


async def read_until_closed(client: WireClient) -> tuple[ConnectionClosed, list[str]]:
    """Every `e` event until the server closes the connection, and how it closed."""
    errors: list[str] = []
    with trio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
        while True:
            text = (await client.receive()).text
            if text.startswith("["):
                errors += [event[1] for event in orjson.loads(text)[1:] if event[0] == "e"]
    await client.aclose()
    return closed.value, errors


async def test_v2_command_flood_gets_an_error_then_1008(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """Past the burst a v2 client is told why (an `e` event) and closed with 1008; a client at
    the allowed rate is never closed."""
    polite = await open_wire_client(ws_url(server))
    await polite.receive()
    flooder = await open_wire_client(ws_url(server))
    await flooder.receive()
    for _ in range(50):
        await flooder.send_text('{"op": "unsub", "ch": ["hot"]}')
        await flooder.send_text('{"op": "sub", "ch": ["hot"]}')
    closed, errors = await read_until_closed(flooder)
    assert closed.code == 1008
    assert closed.reason == "too many commands: at most 5 at once and 2 per second"
    assert errors == ["too many commands: at most 5 at once and 2 per second"]
    assert server.metrics.closed_flooding._value.get() == 1
    await trio.sleep(1)
    assert len(server.hub.clients) == 1, "the flooder's handler ended and left the hub"
    for _ in range(20):
        await polite.send_text('{"op": "detail", "ticker": null}')
        await trio.sleep(0.6)
    await polite.receive()
    assert polite.closed is None
    await polite.aclose()


async def test_v1_snapshot_loop_is_closed_with_1008(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """A v1 get_snapshot loop is closed with 1008 and a reason after a handful of snapshots."""
    client = await open_wire_client(ws_url(server, "/ws/stream"), deflate=False)
    await client.receive()
    for _ in range(3):
        await client.send_text('{"type": "get_snapshot"}')
    snapshots = 0
    with trio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
        while True:
            snapshots += '"type": "snapshot"' in (await client.receive()).text
    await client.aclose()
    assert closed.value.code == 1008
    assert closed.value.reason is not None and closed.value.reason.startswith("too many commands")
    # One request fits the burst of 5 (a snapshot costs 5 of it here); it may still be queued
    # when the second one closes the connection.
    assert snapshots <= 1


async def test_v1_repeated_snapshots_share_one_encoding(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """Snapshot requests at one seq are answered with the same text, encoded once."""
    from flowboard.server.legacy import feed_of

    feed = feed_of(server)
    now = server.wall_ms()
    assert feed.snapshot(now) is feed.snapshot(now)


async def test_v1_deeply_nested_message_is_ignored_and_counted(
    server: Runtime, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """'[' * 60000 is ignored like other bad input: counted, one short log line, no traceback;
    the connection goes on."""
    client = await open_wire_client(ws_url(server, "/ws/stream"))
    await client.receive()
    with caplog.at_level(logging.INFO):
        await client.send_text("[" * 60000)
        await client.send_text('{"type": "ping"}')
        with trio.fail_after(5):
            while '"type": "pong"' not in (await client.receive()).text:
                pass
    await client.aclose()
    assert server.metrics.bad_commands._value.get() == 1
    assert not any(record.exc_info for record in caplog.records)
    assert any("nested too deeply" in record.getMessage() for record in caplog.records)


async def test_foreign_origin_gets_403_before_the_upgrade(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """A browser page from another origin cannot open either stream; the server's own origin
    and a listed one can."""
    own = server.url
    for path in ("/ws", "/ws/stream"):
        with pytest.raises(ConnectionClosed) as refused:
            await open_wire_client(ws_url(server, path), headers=[("Origin", "http://evil.example")])
        assert refused.value.code == 403
        for origin in (own, "https://ops.example"):
            client = await open_wire_client(ws_url(server, path), headers=[("Origin", origin)])
            await client.receive()
            await client.aclose()
    assert server.metrics.refused.labels("origin")._value.get() == 2


async def test_connection_limits_answer_503_and_free_up(
    server: Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """Past 4 from one address, or 6 in all, a handshake gets 503; another address still gets
    in until the total is reached; a closed connection frees its place."""
    mine = [await open_wire_client(ws_url(server)) for _ in range(4)]
    with pytest.raises(ConnectionClosed) as refused:
        await open_wire_client(ws_url(server, "/ws/stream"))
    assert refused.value.code == 503
    others = [await open_wire_client(ws_url(server), local_address="127.0.0.2") for _ in range(2)]
    with pytest.raises(ConnectionClosed) as full:
        await open_wire_client(ws_url(server), local_address="127.0.0.3")
    assert full.value.code == 503
    await mine.pop().aclose()
    with trio.fail_after(5):
        while True:
            try:
                again = await open_wire_client(ws_url(server), local_address="127.0.0.3")
            except ConnectionClosed:
                await trio.sleep(0.1)
            else:
                break
    await again.receive()
    for client in [*mine, *others, again]:
        await client.aclose()
    assert server.metrics.refused.labels("limit")._value.get() >= 2


# -- a real process with few file descriptors ------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
#: Open files the server process may have: room for its own ~40 and a few dozen connections.
LOW_NOFILE = 100


def _low_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_NOFILE, hard))


def _healthz(host: str, port: int) -> bool:
    try:
        return httpx.get(f"http://{host}:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _handshake_status(host: str, port: int) -> tuple[int, socket.socket]:
    """Open /ws with a raw handshake; the HTTP status of the answer, and the socket."""
    sock = socket.create_connection((host, port))
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, "closed without an answer"
        answer += chunk
    return int(answer.split(b" ", 2)[1]), sock


def test_descriptor_shortage_is_logged_once_and_the_server_recovers(tmp_path: Path) -> None:
    """Under a low open-files limit, WebSocket connections past what the descriptors allow get
    a 503. A flood of idle connections exhausts the descriptors anyway: the server logs the
    shortage once (no traceback, not every 100 ms), backs off, and once the flood is gone it
    accepts and answers again."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "flowboard", "serve", "--port", "0", "--sim-history", "0"),
            *("--db", str(tmp_path / "flowboard.db")),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_low_nofile,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        url = process.stdout.readline().rsplit(" ", 1)[1].strip()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        # The connection limit leaves room for the server's own files: the rest get a 503.
        streams = [_handshake_status(host, int(port)) for _ in range(LOW_NOFILE - RESERVED_FILES + 4)]
        statuses = [status for status, _ in streams]
        assert statuses == [101] * (LOW_NOFILE - RESERVED_FILES) + [503] * 4
        for _, sock in streams:
            sock.close()
        flood = []
        for _ in range(LOW_NOFILE + 50):
            sock = socket.create_connection((host, int(port)))
            flood.append(sock)
        time.sleep(3)  # the server keeps failing to accept meanwhile
        for sock in flood:
            sock.close()
        deadline = time.monotonic() + 15
        while not _healthz(host, int(port)):
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        log = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert log.count("cannot accept connections: EMFILE") == 1, log
    assert log.count("accepting connections again") == 1, log
    assert "Traceback" not in log and "trio.serve_listeners" not in log, log


class _ExhaustedListener(trio.abc.Listener[trio.SocketStream]):
    """Fails ``failures`` accepts with EMFILE, then hands out one connected stream."""

    def __init__(self, failures: int, stream: trio.SocketStream) -> None:
        self.failures = failures
        self.stream = stream
        self.attempts: list[float] = []

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        self.attempts.append(trio.current_time())
        if len(self.attempts) <= self.failures:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return self.stream

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_patient_listener_backs_off_and_logs_the_shortage_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Six EMFILE failures: retried after 0.1, 0.2, 0.4, 0.8, 1.6, 2 s (capped), each counted,
    logged once when it starts and once when accepting works again."""
    left, right = trio.socket.socketpair()
    inner = _ExhaustedListener(6, trio.SocketStream(left))
    counted: list[None] = []
    listener = PatientListener(inner, on_failure=lambda: counted.append(None))
    with caplog.at_level(logging.INFO, logger="flowboard.server.listener"):
        stream = await listener.accept()
    assert stream is inner.stream
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(inner.attempts)]
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert len(counted) == 6 and listener.failures == 0
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "cannot accept connections",
        "accepting connections again (6 attempts failed meanwhile)",
    ]
    await listener.aclose()
    right.close()

"""The cheap load generator: thousands of WebSocket clients that only count frames.

    python -m bench.mass URL COUNT [--deflate] [--rcvbuf BYTES] [--read-every SECONDS]

One process, no trio, no asyncio: COUNT blocking handshakes (offering permessage-deflate when
asked), then one level-triggered ``select.epoll`` loop over the non-blocking sockets. Each read
goes to a ``bench.frames.FrameCounter``, which parses frame headers only (payloads are never
inflated or decoded) so that the generator spends less CPU per frame than the server it loads;
pings are answered, close codes recorded. Prints ``connected N failed F in S s`` once connected;
then each line ``report`` on stdin prints one JSON line of running totals (messages, bytes,
closes, this process's CPU seconds), and the end of stdin (or SIGTERM) prints the last one and
exits. ``Mass`` below runs several of these (``procs``) from the benchmark and adds them up.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.frames import OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG, FrameCounter, client_frame, close_code

_HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
)
_EXT = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
# Below glibc's mmap threshold (128 KiB): a larger recv() buffer is mapped and unmapped on every
# read, which cost ~40 µs per read here, several times the rest of a read's work.
_READ_BYTES = 65_536
# Handshakes in flight at once: enough to overlap the server's round trips, few enough for its
# listen backlog (a refused SYN would be retried a second later).
_HANDSHAKE_BATCH = 32
_HANDSHAKE_TIMEOUT_S = 60.0


class Conn:
    __slots__ = ("close_code", "counter", "lost", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.counter = FrameCounter()
        self.close_code: int | None = None
        self.lost = False  # the connection ended without a close frame


def start_handshake(host: str, port: int, path: str, deflate: bool, rcvbuf: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(_HANDSHAKE_TIMEOUT_S)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = _HANDSHAKE.format(path=path, host=f"{host}:{port}", key=key, ext=_EXT if deflate else "")
    sock.sendall(request.encode())
    return sock


def finish_handshake(sock: socket.socket) -> Conn:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    status, _, _ = head.partition(b"\r\n")
    if b" 101 " not in status:
        raise ConnectionError(f"expected 101 Switching Protocols, got {status!r}")
    _, _, rest = head.partition(b"\r\n\r\n")
    sock.setblocking(False)
    conn = Conn(sock)
    conn.counter.feed(rest)
    return conn


def handle_controls(conn: Conn) -> None:
    for opcode, payload in conn.counter.controls:
        if opcode == OPCODE_PING:
            try:
                conn.sock.send(client_frame(OPCODE_PONG, payload, os.urandom(4)))
            except OSError:
                conn.lost = True
        elif opcode == OPCODE_CLOSE and conn.close_code is None:
            conn.close_code = close_code(payload)
    conn.counter.controls.clear()


def totals(conns: list[Conn], failed: int) -> dict[str, Any]:
    messages = [c.counter.messages for c in conns]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "clients": len(conns),
        "failed": failed,
        "lost": sum(c.lost for c in conns),
        "closed": dict(Counter(str(c.close_code) for c in conns if c.close_code is not None)),
        "messages_total": sum(messages),
        "messages_min": min(messages) if messages else 0,
        "bytes_total": sum(c.counter.wire_bytes for c in conns),
        "bytes_per_client_median": statistics.median(c.counter.wire_bytes for c in conns) if conns else 0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def serve(conns: list[Conn], failed: int, read_every_s: float) -> None:
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    poller = select.epoll()
    # Per socket, what one read needs, looked up once: the hot loop below is the generator's cost.
    readers: dict[int, tuple[Any, Any, Conn]] = {}
    for conn in conns:
        readers[conn.sock.fileno()] = (conn.sock.recv, conn.counter.feed, conn)
        poller.register(conn.sock.fileno(), select.EPOLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.EPOLLIN | select.EPOLLHUP)
    while not stop:
        # Reading each socket at most every read_every_s lets several frames gather in the kernel
        # per read, so that one recv() and one pass of Python serve them all: what a frame costs
        # the generator falls while the server's work per frame stays the same (counting clients
        # measure no latency; the measuring clients read at once).
        time.sleep(read_every_s)
        try:
            events = poller.poll(0.5)
        except InterruptedError:
            continue
        for fd, _ in events:
            reader = readers.get(fd)
            if reader is None:
                line = sys.stdin.readline()
                if not line:
                    stop = True  # the parent closed stdin or went away
                else:
                    _print_totals(conns, failed)
                continue
            recv, feed, conn = reader
            try:
                data = recv(_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                feed(data)
                if conn.counter.controls:
                    handle_controls(conn)
            else:
                poller.unregister(fd)
                del readers[fd]
                conn.lost = conn.close_code is None
    _print_totals(conns, failed)


def _print_totals(conns: list[Conn], failed: int) -> None:
    # The parent may be gone (interrupted run): nobody is left to tell.
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(totals(conns, failed)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--rcvbuf", type=int, default=None)
    parser.add_argument("--read-every", type=float, default=0.2, help="seconds between read passes")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    authority, _, path = args.url[len("ws://") :].partition("/")
    host, _, port = authority.rpartition(":")
    conns: list[Conn] = []
    failed = 0
    started = time.monotonic()
    for batch_start in range(0, args.count, _HANDSHAKE_BATCH):
        pending = []
        for _ in range(min(_HANDSHAKE_BATCH, args.count - batch_start)):
            try:
                pending.append(start_handshake(host, int(port), "/" + path, args.deflate, args.rcvbuf))
            except OSError:
                failed += 1
        for sock in pending:
            try:
                conns.append(finish_handshake(sock))
            except OSError:
                sock.close()
                failed += 1
    print(f"connected {len(conns)} failed {failed} in {time.monotonic() - started:.1f} s", flush=True)
    serve(conns, failed, args.read_every)
    return 0


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Mass:
    """``count`` counting clients in ``procs`` ``bench.mass`` subprocesses, added up.

    Blocking (pipes to the subprocesses); the trio benchmark calls it through ``trio.to_thread``.
    """

    def __init__(self, url: str, count: int, *, deflate: bool, procs: int = 1) -> None:
        procs = max(1, min(procs, count))
        self.count = count
        self.procs: list[subprocess.Popen[str]] = []
        for index in range(procs):
            share = count // procs + (1 if index < count % procs else 0)
            argv = [sys.executable, "-m", "bench.mass", url, str(share)] + (["--deflate"] if deflate else [])
            self.procs.append(
                subprocess.Popen(
                    argv,
                    cwd=Path(__file__).resolve().parent.parent,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    preexec_fn=_raise_nofile,
                )
            )

    def wait_connected(self) -> str:
        lines = []
        for proc in self.procs:
            assert proc.stdout is not None
            lines.append(proc.stdout.readline().strip() or f"exited ({proc.wait()})")
        return "; ".join(lines)

    def report(self) -> dict[str, Any]:
        """Running totals over all subprocesses (cumulative since they started)."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("report\n")
            proc.stdin.flush()
        return _add([self._read_json(proc) for proc in self.procs])

    def finish(self) -> dict[str, Any]:
        summaries = []
        for proc in self.procs:
            assert proc.stdin is not None
            if not proc.stdin.closed:
                proc.stdin.close()
        for proc in self.procs:
            summaries.append(self._read_json(proc, last=True))
            proc.wait(30)
        return _add(summaries)

    @staticmethod
    def _read_json(proc: subprocess.Popen[str], last: bool = False) -> dict[str, Any]:
        assert proc.stdout is not None
        text = proc.stdout.read() if last else proc.stdout.readline()
        lines = [line for line in text.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {"error": "no report"}


def _add(reports: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in reports if "error" not in r]
    closed: Counter[str] = Counter()
    for report in good:
        closed.update(report["closed"])
    summed = {
        key: sum(r[key] for r in good)
        for key in ("clients", "failed", "lost", "messages_total", "bytes_total", "cpu_s")
    }
    return {
        **summed,
        "closed": dict(closed),
        "messages_min": min((r["messages_min"] for r in good), default=0),
        "errors": len(reports) - len(good),
    }


if __name__ == "__main__":
    sys.exit(main())

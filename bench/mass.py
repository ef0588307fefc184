"""Many cheap WebSocket clients in one process: a plain epoll loop, no trio, no inflating.

    python -m bench.mass URL COUNT [--deflate] [--rcvbuf BYTES]

Connects COUNT clients to URL (``ws://host:port/path``), offering permessage-deflate when
asked, then reads until SIGTERM or stdin closes, counting wire bytes and data frames per
client (frame headers parsed, payloads never inflated or decoded) and answering pings.
Prints ``connected N`` on stdout once all are connected, and a JSON summary at the end.
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
import sys
import time
from collections import Counter

_HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
)
_EXT = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


class Conn:
    __slots__ = ("buf", "bytes", "close_code", "frames", "sock")

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(rest)
        self.bytes = len(rest)
        self.frames = 0
        self.close_code: int | None = None


def connect(host: str, port: int, path: str, deflate: bool, rcvbuf: int | None) -> Conn:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = _HANDSHAKE.format(path=path, host=f"{host}:{port}", key=key, ext=_EXT if deflate else "")
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    status, _, _ = head.partition(b"\r\n")
    if b" 101 " not in status:
        raise ConnectionError(f"handshake refused: {status!r}")
    _, _, rest = head.partition(b"\r\n\r\n")
    sock.setblocking(False)
    return Conn(sock, rest)


def parse_frames(conn: Conn) -> None:
    buf = conn.buf
    offset = 0
    size = len(buf)
    while size - offset >= 2:
        length = buf[offset + 1] & 0x7F
        header = 2
        if length == 126:
            if size - offset < 4:
                break
            length = int.from_bytes(buf[offset + 2 : offset + 4], "big")
            header = 4
        elif length == 127:
            if size - offset < 10:
                break
            length = int.from_bytes(buf[offset + 2 : offset + 10], "big")
            header = 10
        if size - offset < header + length:
            break
        opcode = buf[offset] & 0x0F
        fin = buf[offset] & 0x80
        if opcode == 8:
            payload = buf[offset + header : offset + header + length]
            conn.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        elif opcode == 9:
            payload = bytes(buf[offset + header : offset + header + length])
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            with contextlib.suppress(OSError):
                conn.sock.send(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)
        elif fin and opcode in (0, 1, 2):
            conn.frames += 1
        offset += header + length
    del buf[:offset]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--rcvbuf", type=int, default=None)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    authority, _, path = args.url[len("ws://") :].partition("/")
    host, _, port = authority.rpartition(":")
    conns: dict[int, Conn] = {}
    failed = 0
    started = time.monotonic()
    for _ in range(args.count):
        try:
            conn = connect(host, int(port), "/" + path, args.deflate, args.rcvbuf)
        except OSError:
            failed += 1
            continue
        conns[conn.sock.fileno()] = conn
    print(f"connected {len(conns)} failed {failed} in {time.monotonic() - started:.1f} s", flush=True)

    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    poller = select.epoll()
    for fd in conns:
        poller.register(fd, select.EPOLLIN)
    poller.register(sys.stdin.fileno(), select.EPOLLIN | select.EPOLLHUP)
    lost = 0
    while not stop:
        try:
            events = poller.poll(0.5)
        except InterruptedError:
            continue
        for fd, _ in events:
            conn = conns.get(fd)
            if conn is None:
                stop = True  # stdin: the parent went away or asked us to finish
                continue
            try:
                data = conn.sock.recv(262_144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                if conn.close_code is None:
                    lost += 1
                continue
            conn.bytes += len(data)
            conn.buf += data
            parse_frames(conn)
    per_client = [c.bytes for c in conns.values()]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "clients": len(conns),
        "failed": failed,
        "lost": lost,
        "bytes_total": sum(per_client),
        "frames_total": sum(c.frames for c in conns.values()),
        "bytes_per_client_median": statistics.median(per_client) if per_client else 0,
        "closed": dict(Counter(str(c.close_code) for c in conns.values() if c.close_code is not None)),
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

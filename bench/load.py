"""The load generator's measuring core: clients that count wire bytes by message kind, measure
delivery latency, decode v2 with the package's decoder, and check their view against the API.

Everything here runs under trio in one process and takes the wall clock as an argument, so
``tests/test_bench_quick.py`` can drive it against an in-process server on the autojump clock.
Many mostly-idle clients are cheaper in ``bench.mass`` (a plain epoll loop in a subprocess);
the server process itself is started and sampled by ``bench.server``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import attrs
import httpx
import orjson
import trio

from flowboard.model import USD_DECIMALS
from flowboard.protocol.decoder import ViewState
from flowboard.testing.wsclient import ConnectionClosed, WireClient, open_wire_client

WallMs = Callable[[], float]


def real_wall_ms() -> float:
    return time.time_ns() / 1_000_000


# v2 frames by the events they carry, most telling first: a frame is counted under one kind.
_V2_KINDS = (
    ("resync", (b'["r",',)),
    ("trades", (b'["t",',)),
    ("hot", (b'["k",', b'["w",', b'["s",', b'["i",')),
    ("top", (b'["x",',)),
    ("analytics", (b'["a",', b'["p",', b'["c",')),
    ("today", (b'["d",',)),
    ("defs", (b'["m",',)),
)


def v2_kind(text: str, first: bool) -> str:
    if first:
        return "snapshot"
    data = text.encode()
    for kind, needles in _V2_KINDS:
        if any(needle in data for needle in needles):
            return kind
    return "other"


def v1_kind(text: str) -> str:
    # json.dumps writes "type" first: {"type": "trade", ...}
    if text.startswith('{"type": "'):
        return text[10 : text.index('"', 10)]
    return "other"


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@attrs.define
class Tally:
    """What one client received, in the measuring window unless said otherwise."""

    protocol: str
    deflate: bool
    bytes_by_kind: Counter[str] = attrs.Factory(Counter)
    frames_by_kind: Counter[str] = attrs.Factory(Counter)
    latencies_ms: list[float] = attrs.Factory(list)
    trades: int = 0
    trades_per_frame: Counter[int] = attrs.Factory(Counter)
    snapshot_bytes: int = 0  # wire bytes of the first message (always counted)
    snapshot_text_bytes: int = 0
    deflate_negotiated: bool = False
    closed: tuple[int | None, str | None] | None = None
    decode_errors: int = 0


class MeasuredClient:
    """A full client: reads every message, counts its wire bytes, and (``decode``) folds v2
    frames with ``ViewState`` so that its view can be compared with the server's."""

    def __init__(
        self, url: str, *, protocol: str, deflate: bool, decode: bool, wall_ms: WallMs = real_wall_ms
    ) -> None:
        self.url = url
        self.protocol = protocol
        self.decode = decode and protocol == "v2"
        self.wall_ms = wall_ms
        self.tally = Tally(protocol=protocol, deflate=deflate)
        self.view = ViewState()
        # Measuring only between start and stop (the snapshot is always recorded).
        self.measuring = False
        self._client: WireClient | None = None
        self._last_ts = 0
        self._first = True
        self.connected = trio.Event()

    async def run(self) -> None:
        tally = self.tally
        try:
            self._client = await open_wire_client(self.url, deflate=tally.deflate)
        except (OSError, ConnectionClosed) as exc:
            tally.closed = (None, f"connect failed: {exc}")
            self.connected.set()
            return
        tally.deflate_negotiated = self._client.deflate_negotiated
        self.connected.set()
        try:
            while True:
                message = await self._client.receive()
                self._on_message(message.text, message.wire_bytes)
        except ConnectionClosed as exc:
            tally.closed = (exc.code, exc.reason)
        finally:
            await self._client.aclose()

    def _on_message(self, text: str, wire_bytes: int) -> None:
        tally = self.tally
        now = self.wall_ms()
        first = self._first
        self._first = False
        if first:
            tally.snapshot_bytes = wire_bytes
            tally.snapshot_text_bytes = len(text.encode())
        if self.protocol == "v2":
            kind = v2_kind(text, first)
            trade_times = self._v2_trade_times(text)
        else:
            kind = "snapshot" if first else v1_kind(text)
            trade_times = self._v1_trade_times(text, kind)
        if not self.measuring:
            return
        tally.bytes_by_kind[kind] += wire_bytes
        tally.frames_by_kind[kind] += 1
        if trade_times:
            tally.trades += len(trade_times)
            tally.trades_per_frame[len(trade_times)] += 1
            tally.latencies_ms.extend(now - ts for ts in trade_times)

    def _v2_trade_times(self, text: str) -> list[int]:
        if self.decode:
            try:
                self.view.apply_frame(text)
            except Exception:
                self.tally.decode_errors += 1
        frame = orjson.loads(text)
        times = []
        for event in frame[1:]:
            code = event[0]
            if code == "H":
                self._last_ts = event[1]["t0"]
            elif code == "t":
                for row in event[1:]:
                    self._last_ts += row[4]
                    times.append(self._last_ts)
        return times

    def _v1_trade_times(self, text: str, kind: str) -> list[int]:
        if kind != "trade":
            return []
        # "ts" is the last field of "trade": find it without parsing the whole message.
        start = text.index('"ts": ') + 6
        end = text.index("}", start)
        return [int(text[start:end])]


@attrs.frozen
class Group:
    """Clients of one protocol and compression setting."""

    protocol: str  # "v1" or "v2"
    deflate: bool
    clients: int
    decode: bool = True

    @property
    def name(self) -> str:
        return f"{self.protocol} {'deflate' if self.deflate else 'plain'}"

    @property
    def path(self) -> str:
        return "/ws" if self.protocol == "v2" else "/ws/stream"


def ws_base(http_url: str) -> str:
    return http_url.replace("http://", "ws://")


async def open_group(
    nursery: trio.Nursery, http_url: str, group: Group, wall_ms: WallMs = real_wall_ms
) -> list[MeasuredClient]:
    clients = []
    for _ in range(group.clients):
        client = MeasuredClient(
            ws_base(http_url) + group.path,
            protocol=group.protocol,
            deflate=group.deflate,
            decode=group.decode,
            wall_ms=wall_ms,
        )
        nursery.start_soon(client.run)
        await client.connected.wait()
        clients.append(client)
    return clients


def summarize_group(clients: Sequence[MeasuredClient], seconds: float) -> dict[str, Any]:
    """Per-client rates (median over the group's clients) by kind, latency over all trades."""
    kinds = sorted({kind for c in clients for kind in c.tally.bytes_by_kind})
    per_kind = {
        kind: statistics.median(c.tally.bytes_by_kind[kind] / seconds for c in clients) for kind in kinds
    }
    frames = {
        kind: statistics.median(c.tally.frames_by_kind[kind] / seconds for c in clients) for kind in kinds
    }
    total = [sum(c.tally.bytes_by_kind.values()) / seconds for c in clients]
    frames_total = [sum(c.tally.frames_by_kind.values()) / seconds for c in clients]
    latencies = [lat for c in clients for lat in c.tally.latencies_ms]
    batched: Counter[int] = Counter()
    for c in clients:
        batched.update(c.tally.trades_per_frame)
    closed = Counter(str(c.tally.closed[0]) for c in clients if c.tally.closed is not None)
    return {
        "clients": len(clients),
        "deflate_negotiated": sum(c.tally.deflate_negotiated for c in clients),
        "bytes_per_s_per_client": statistics.median(total) if total else 0,
        "bytes_per_s_per_client_by_kind": per_kind,
        "frames_per_s_per_client": statistics.median(frames_total) if frames_total else 0,
        "frames_per_s_per_client_by_kind": frames,
        "snapshot_wire_bytes": statistics.median(c.tally.snapshot_bytes for c in clients) if clients else 0,
        "snapshot_text_bytes": statistics.median(c.tally.snapshot_text_bytes for c in clients)
        if clients
        else 0,
        "trades_per_client": statistics.median(c.tally.trades for c in clients) if clients else 0,
        "latency_ms": {
            "samples": len(latencies),
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None,
        },
        "trades_per_frame": {str(k): v for k, v in sorted(batched.items())},
        "closed": dict(closed),
        "decode_errors": sum(c.tally.decode_errors for c in clients),
    }


def _usd_units(text: str) -> int:
    return int(Decimal(text).scaleb(USD_DECIMALS))


async def check_views(
    http_url: str, clients: Sequence[MeasuredClient], *, attempts: int = 20
) -> dict[str, Any]:
    """Compare each decoding client's hot markets and today's totals with ``/api/stats`` and
    ``/api/markets/hot`` read at the same seq (retried until a quiet moment gives one)."""
    decoding = [c for c in clients if c.decode and c.tally.closed is None]
    if not decoding:
        return {"checked": 0, "ok": True}
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as http:
        for attempt in range(attempts):
            stats = (await http.get("/api/stats")).json()
            hot = (await http.get("/api/markets/hot")).json()["markets"]
            again = (await http.get("/api/stats")).json()
            if again["seq"] != stats["seq"]:
                await trio.sleep(0.01)
                continue
            seq = stats["seq"]
            with trio.move_on_after(2):
                # Polls other tasks' views for a moment; an Event per client is not worth it here.
                while any(c.view.seq < seq for c in decoding):  # noqa: ASYNC110
                    await trio.sleep(0.005)
            if any(c.view.seq != seq for c in decoding):
                continue
            expected_hot = [(m["ticker"], _usd_units(m["window"]["usd_volume"])) for m in hot]
            expected_today = [stats["today"]["trades"], _usd_units(stats["today"]["usd_volume"])]
            mismatches = []
            for index, client in enumerate(decoding):
                summary = client.view.summary()
                got_hot = [(m["ticker"], m["window"][1]) for m in summary.get("hot", [])]
                if got_hot != expected_hot or summary.get("today") != expected_today:
                    mismatches.append(
                        {
                            "client": index,
                            "hot": got_hot[:3],
                            "expected_hot": expected_hot[:3],
                            "today": summary.get("today"),
                            "expected_today": expected_today,
                        }
                    )
            return {
                "checked": len(decoding),
                "seq": seq,
                "attempts": attempt + 1,
                "ok": not mismatches,
                "mismatches": mismatches[:3],
            }
    # Inconclusive, not a mismatch: the feed never paused long enough to read both sides at one seq.
    return {"checked": 0, "ok": None, "error": f"no quiet moment in {attempts} attempts"}


async def read_metrics(http_url: str) -> dict[str, float]:
    """The server's Prometheus counters and gauges (flowboard_* only), by sample name."""
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("flowboard_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def histogram_quantile(
    before: dict[str, float], after: dict[str, float], name: str, q: float
) -> float | None:
    """The q-quantile (0..1) of what a Prometheus histogram observed between two ``read_metrics``,
    as the upper bound of the bucket it falls in (``inf`` past the last bound), or None when the
    histogram is not exported or observed nothing in between."""
    prefix = f'{name}_bucket{{le="'
    buckets: list[tuple[float, float]] = []
    for key, value in after.items():
        if key.startswith(prefix):
            bound_text = key[len(prefix) : key.index('"', len(prefix))]
            buckets.append((float(bound_text), value - before.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= q * total:
            return bound
    return buckets[-1][0]


def dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=False)


class SlowClient:
    """A client that reads at most ``bytes_per_s`` (0: stops reading after the handshake),
    with a small receive buffer so that the server feels it at once."""

    def __init__(self, url: str, *, bytes_per_s: int, deflate: bool = False) -> None:
        self.url = url
        self.bytes_per_s = bytes_per_s
        self.deflate = deflate
        self.wire_bytes = 0
        self.messages = 0
        self.resyncs = 0
        self.closed: tuple[int | None, str | None] | None = None

    async def run(self) -> None:
        import socket

        from wsproto import ConnectionType, WSConnection
        from wsproto.events import CloseConnection, TextMessage

        authority, _, path = self.url[len("ws://") :].partition("/")
        host, _, port = authority.rpartition(":")
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect((host, int(port)))
        stream = trio.SocketStream(sock)
        client = WireClient(stream, WSConnection(ConnectionType.CLIENT))
        await client._handshake(authority, "/" + path, self.deflate)
        if self.bytes_per_s == 0:
            await trio.sleep_forever()
        parts: list[str] = []
        try:
            while self.closed is None:
                await trio.sleep(1)
                data = await stream.receive_some(self.bytes_per_s)
                if not data:
                    self.closed = (None, "connection lost")
                    break
                self.wire_bytes += len(data)
                client._ws.receive_data(data)
                for event in client._ws.events():
                    if isinstance(event, TextMessage):
                        parts.append(event.data)
                        if event.message_finished:
                            text = "".join(parts)
                            parts = []
                            self.messages += 1
                            self.resyncs += text[:200].count('["r",')
                    elif isinstance(event, CloseConnection):
                        self.closed = (event.code, event.reason)
        finally:
            await stream.aclose()

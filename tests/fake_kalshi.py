"""A fake Kalshi on loopback: the WebSocket feed and the public REST API, as Kalshi documents them.

Reusable by ``bench/``. It holds the full list of trades it generated (``trades``,
its ground truth) and injects faults on demand. Start it with::

    fake = FakeKalshi(wall_ms=..., public_keys={"key-id": public_key})
    await nursery.start(fake.serve)
    fake.ws_url, fake.rest_url

Signatures are verified whenever the signing headers are present (RSA-PSS SHA-256,
MGF1 SHA-256, salt 32 over ``timestamp + METHOD + path``); ``require_auth`` refuses
connections without them. Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import random
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from flowboard.ingest.kalshi_format import encode_envelope, encode_legacy_trade_msg, encode_trade_msg
from flowboard.model import COUNT_SCALE, ONE_DOLLAR, PRICE_DECIMALS, Trade, from_units, series_of, units_text

WS_PATH = "/trade-api/ws/v2"
REST_PREFIX = "/trade-api/v2"

Delivery = Literal["send", "gap", "silent", "duplicate", "legacy"]

TICKERS = (
    "KXBTCD-25DEC3117-T101999.99",
    "KXBTCD-25DEC3117-T102249.99",
    "HIGHNY-22DEC23-B53.5",
    "KXBTC15M-26APR160100-00",
    "KXNFLGAME-25SEP25SEAARI-SEA",
    "KXNFLGAME-25SEP25SEAARI-ARI",
    "FED-23DEC-T3.00",
)
CATEGORIES = {
    "KXBTCD": "Crypto",
    "KXBTC15M": "Crypto",
    "HIGHNY": "Climate and Weather",
    "KXNFLGAME": "Sports",
    "FED": "Economics",
}


def event_of(ticker: str) -> str:
    return ticker.rsplit("-", 1)[0]


def rfc3339(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def rest_trade(trade: Trade) -> dict[str, Any]:
    """A trade as ``GET /markets/trades`` lists it (``ticker``, ``created_time``)."""
    return {
        "trade_id": trade.trade_id,
        "ticker": trade.ticker,
        "yes_price_dollars": units_text(trade.yes_price, PRICE_DECIMALS, 4),
        "no_price_dollars": units_text(ONE_DOLLAR - trade.yes_price, PRICE_DECIMALS, 4),
        "count_fp": f"{from_units(trade.count, 2):.2f}",
        "taker_side": trade.taker_side,
        "taker_outcome_side": trade.taker_side,
        "created_time": rfc3339(trade.ts_ms),
    }


@attrs.define
class _Subscription:
    sid: int
    tickers: set[str] | None  # None: all markets
    seq: int = 0


@attrs.define(eq=False)
class _Connection:
    ws: WebSocketConnection
    subscriptions: dict[int, _Subscription] = attrs.field(factory=dict)
    stalled: bool = False  # no pings and no data until the client gives up
    closed: trio.Event = attrs.field(factory=trio.Event)


class FakeKalshi:
    """A Kalshi look-alike holding its ground truth and a set of fault switches."""

    def __init__(
        self,
        *,
        wall_ms: Callable[[], int],
        public_keys: dict[str, rsa.RSAPublicKey] | None = None,
        require_auth: bool = False,
        ping_interval_s: float = 10.0,
        send_seq: bool = True,
        seed: int = 0,
        markets_page_size: int = 1000,
    ) -> None:
        self.wall_ms = wall_ms
        self.public_keys = public_keys or {}
        self.require_auth = require_auth
        self.ping_interval_s = ping_interval_s
        self.send_seq = send_seq  # False: trade envelopes carry no seq (third-party docs)
        self.rng = random.Random(seed)
        self.markets_page_size = markets_page_size
        #: Every trade ever generated, in generation order: the ground truth.
        self.trades: list[Trade] = []
        #: Fault name -> how many times it was injected.
        self.faults: Counter[str] = Counter()
        #: Request counts: "ws_connect", "ws_accepted", "ws_rejected", "rest:<route>", "rest_429",
        #: "signed_ok".
        self.counts: Counter[str] = Counter()
        #: The ``tickers`` parameter of every ``/markets`` request, for batching tests.
        self.markets_batches: list[list[str]] = []
        self.commands: list[dict[str, Any]] = []
        self.connections: list[_Connection] = []
        self._next_sid = 1
        self._refuse_next = 0
        self._refuse_status = 401
        self._rest_429_next = 0
        self.rest_429_rate = 0.0  # probability of a 429 on any REST request
        self._ws_port = 0
        self._rest_port = 0
        self.connected = trio.Event()  # set at every new accepted connection (replaced after)

    # ----------------------------------------------------------------- serving

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self._ws_port}{WS_PATH}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self._rest_port}{REST_PREFIX}"

    async def serve(self, *, task_status: trio.TaskStatus[FakeKalshi] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, self._ws_handler, "127.0.0.1", 0, None)
            self._ws_port = server.port
            listeners = await nursery.start(trio.serve_tcp, self._http_handler, 0)
            self._rest_port = listeners[0].socket.getsockname()[1]
            task_status.started(self)

    # ----------------------------------------------------------------- data

    def random_trade(self, ts_ms: int, *, legacy_exact: bool = False) -> Trade:
        """A plausible trade at ``ts_ms``; ``legacy_exact``: whole cents, contracts and seconds,
        so that the legacy format carries it exactly."""
        rng = self.rng
        whole_cents = legacy_exact
        if legacy_exact:
            ts_ms -= ts_ms % 1000
        ticker = TICKERS[min(int(rng.expovariate(0.8)), len(TICKERS) - 1)]
        if whole_cents or rng.random() < 0.5:
            price = rng.randint(1, 99) * (ONE_DOLLAR // 100)
            count = rng.randint(1, 500) * COUNT_SCALE
        else:
            price = rng.randint(1, 999) * (ONE_DOLLAR // 1000)  # $0.001 ticks
            count = rng.randint(1, 50_000)  # fractional contracts
        return Trade(
            trade_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            ticker=ticker,
            yes_price=price,
            count=count,
            taker_side=rng.choice(("yes", "no")),
            ts_ms=ts_ms,
        )

    async def publish(self, trade: Trade, *, delivery: Delivery = "send") -> None:
        """Record ``trade`` as executed and deliver it on the WebSocket as ``delivery`` says.

        ``gap``: not sent, but the sequence advances (a visible gap); ``silent``: not sent
        and no gap; ``duplicate``: sent twice; ``legacy``: sent in the pre-2026 format.
        """
        self.trades.append(trade)
        if delivery != "send":
            self.faults[delivery] += 1
        for conn in list(self.connections):
            if conn.stalled:
                continue
            for sub in list(conn.subscriptions.values()):
                if sub.tickers is not None and trade.ticker not in sub.tickers:
                    continue
                if delivery == "silent":
                    continue
                if delivery == "gap":
                    sub.seq += 1
                    continue
                body = encode_legacy_trade_msg(trade) if delivery == "legacy" else encode_trade_msg(trade)
                for _ in range(2 if delivery == "duplicate" else 1):
                    sub.seq += 1
                    await self._send(conn, encode_envelope(body, sid=sub.sid, seq=self._seq(sub)))

    def _seq(self, sub: _Subscription) -> int | None:
        return sub.seq if self.send_seq else None

    # ----------------------------------------------------------------- faults

    async def drop_connections(self) -> None:
        """Close every WebSocket connection (the client must reconnect)."""
        self.faults["drop"] += 1
        for conn in list(self.connections):
            with trio.move_on_after(5):
                await conn.ws.aclose(code=1011, reason="fake drop")

    def stall(self) -> None:
        """Every current connection goes silent: no data, no pings, until the client leaves."""
        self.faults["stall"] += 1
        for conn in self.connections:
            conn.stalled = True

    async def send_garbage(self, text: str = "\x00not json{") -> None:
        self.faults["garbage"] += 1
        await self._broadcast(text)

    async def send_unknown_type(self) -> None:
        self.faults["unknown_type"] += 1
        await self._broadcast(json.dumps({"type": "orderbook_teleport", "sid": 99, "msg": {}}))

    async def subscription_error(self, code: int = 25) -> None:
        """Send ``code`` (terminal) to every subscription and drop the subscriptions."""
        self.faults[f"error_{code}"] += 1
        for conn in list(self.connections):
            if conn.stalled or not conn.subscriptions:
                continue
            conn.subscriptions.clear()
            await self._send(
                conn,
                json.dumps({"type": "error", "msg": {"code": code, "msg": "Subscription buffer overflow"}}),
            )

    def refuse_next_connections(self, count: int, status: int = 401) -> None:
        self.faults[f"refuse_{status}"] += count
        self._refuse_next += count
        self._refuse_status = status

    def rate_limit_next_requests(self, count: int) -> None:
        self.faults["rest_429"] += count
        self._rest_429_next += count

    async def _broadcast(self, text: str) -> None:
        for conn in list(self.connections):
            if not conn.stalled:
                await self._send(conn, text)

    async def _send(self, conn: _Connection, text: str) -> None:
        try:
            await conn.ws.send_message(text)
        except ConnectionClosed:
            self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        conn.closed.set()

    # ----------------------------------------------------------------- auth

    def _verify(self, headers: dict[str, str], method: str, path: str) -> bool | None:
        """True/False for a good/bad signature; None when the request is unsigned."""
        key_id = headers.get("kalshi-access-key")
        if key_id is None:
            return None
        key = self.public_keys.get(key_id)
        timestamp = headers.get("kalshi-access-timestamp", "")
        signature = headers.get("kalshi-access-signature", "")
        if key is None or not timestamp.isdigit() or abs(int(timestamp) - self.wall_ms()) > 60_000:
            return False
        try:
            key.verify(
                base64.b64decode(signature),
                (timestamp + method + path.split("?", 1)[0]).encode(),
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return False
        self.counts["signed_ok"] += 1
        return True

    # ----------------------------------------------------------------- WebSocket

    async def _ws_handler(self, request: WebSocketRequest) -> None:
        self.counts["ws_connect"] += 1
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        if self._refuse_next > 0:
            self._refuse_next -= 1
            self.counts["ws_rejected"] += 1
            await request.reject(self._refuse_status, body=b'{"error":"refused by fake"}')
            return
        verified = self._verify(headers, "GET", request.path)
        if (
            request.path.split("?", 1)[0] != WS_PATH
            or verified is False
            or (verified is None and self.require_auth)
        ):
            self.counts["ws_rejected"] += 1
            await request.reject(401, body=b'{"error":"authentication failed"}')
            return
        ws = await request.accept()
        conn = _Connection(ws)
        self.connections.append(conn)
        self.counts["ws_accepted"] += 1
        self.connected.set()
        self.connected = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pinger, conn)
                await self._read_commands(conn)
                nursery.cancel_scope.cancel()
        finally:
            self._forget(conn)

    async def _pinger(self, conn: _Connection) -> None:
        try:
            while True:
                await trio.sleep(self.ping_interval_s)
                if not conn.stalled:
                    await conn.ws.ping(b"heartbeat")
        except ConnectionClosed:
            return

    async def _read_commands(self, conn: _Connection) -> None:
        while True:
            try:
                text = await conn.ws.get_message()
            except ConnectionClosed:
                return
            try:
                command = json.loads(text)
            except ValueError:
                await self._send(conn, json.dumps({"type": "error", "msg": {"code": 1, "msg": "bad json"}}))
                continue
            self.commands.append(command)
            if not conn.stalled:
                for reply in self._answer(conn, command):
                    await self._send(conn, json.dumps(reply))

    def _answer(self, conn: _Connection, command: dict[str, Any]) -> list[dict[str, Any]]:
        cid = command.get("id")
        params = command.get("params") or {}
        cmd = command.get("cmd")

        def error(code: int, msg: str) -> dict[str, Any]:
            return {"id": cid, "type": "error", "msg": {"code": code, "msg": msg}}

        if cmd == "subscribe":
            replies = []
            for channel in params.get("channels", []):
                if channel != "trade":
                    replies.append(error(8, "Unknown channel name"))
                    continue
                tickers = params.get("market_tickers")
                sid = self._next_sid
                self._next_sid += 1
                conn.subscriptions[sid] = _Subscription(sid, set(tickers) if tickers else None)
                replies.append({"id": cid, "type": "subscribed", "msg": {"channel": channel, "sid": sid}})
            return replies
        if cmd == "unsubscribe":
            sids = [sid for sid in params.get("sids", []) if conn.subscriptions.pop(sid, None)]
            return [{"id": cid, "type": "unsubscribed", "sid": sid, "seq": 0} for sid in sids]
        if cmd == "update_subscription":
            sub = conn.subscriptions.get(int(params.get("sid") or 0))
            if sub is None:
                return [error(6, "Unknown subscription")]
            tickers = params.get("market_tickers") or []
            if params.get("action") == "add_markets":
                sub.tickers = None if sub.tickers is None else sub.tickers | set(tickers)
            elif params.get("action") == "delete_markets" and sub.tickers is not None:
                sub.tickers -= set(tickers)
            return [
                {
                    "id": cid,
                    "type": "ok",
                    "sid": sub.sid,
                    "msg": {"market_tickers": sorted(sub.tickers or ())},
                }
            ]
        return [error(5, "Unknown command")]

    # ----------------------------------------------------------------- REST

    async def _http_handler(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next_event(conn, stream)
                if not isinstance(request, h11.Request):
                    return
                while not isinstance(await self._next_event(conn, stream), h11.EndOfMessage):
                    pass
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                status, body = self._route(request.method.decode(), request.target.decode(), headers)
                payload = json.dumps(body).encode()
                response = h11.Response(
                    status_code=status,
                    headers=[("content-type", "application/json"), ("content-length", str(len(payload)))],
                )
                await stream.send_all(conn.send(response) + conn.send(h11.Data(data=payload)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    @staticmethod
    async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(65536))

    def _route(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if self._verify(headers, method, url.path) is False:
            return 401, {"error": "bad signature"}
        if not url.path.startswith(REST_PREFIX + "/") or method != "GET":
            return 404, {"error": "not found"}
        parts = url.path[len(REST_PREFIX) + 1 :].split("/")
        route = parts[0] if parts[0] != "markets" or len(parts) == 1 else f"markets/{parts[1]}"
        route = "market" if route.startswith("markets/") and route != "markets/trades" else route
        self.counts[f"rest:{route}"] += 1
        if self._rest_429_next > 0 or (self.rest_429_rate and self.rng.random() < self.rest_429_rate):
            self._rest_429_next = max(0, self._rest_429_next - 1)
            self.counts["rest_429"] += 1
            return 429, {"error": "too many requests"}
        if route == "markets/trades":
            return 200, self._trades_page(query)
        if route == "markets":
            return 200, self._markets_page(query)
        if route == "market" and len(parts) == 2:
            market = self._market(parts[1])
            return (200, {"market": market}) if market else (404, {"error": "not found"})
        if route == "events" and len(parts) == 2:
            event = self._event(parts[1])
            return (200, {"event": event, "markets": []}) if event else (404, {"error": "not found"})
        if route == "series" and len(parts) == 2:
            return 200, {"series": self._series(parts[1])}
        return 404, {"error": "not found"}

    def _trades_page(self, query: dict[str, str]) -> dict[str, Any]:
        limit = max(1, min(1000, int(query.get("limit", "100"))))
        if query.get("cursor"):
            snapshot, offset = map(int, base64.b64decode(query["cursor"]).decode().split(":"))
        else:
            snapshot, offset = len(self.trades), 0
        min_ts = int(query.get("min_ts", "0"))
        max_ts = int(query.get("max_ts", str(2**62)))
        ticker = query.get("ticker")
        chosen = [
            t
            for t in self.trades[:snapshot]
            if min_ts <= t.ts_ms // 1000 <= max_ts and (ticker is None or t.ticker == ticker)
        ]
        # Kalshi documents no order: serve a stable but scrambled one.
        chosen.sort(key=lambda t: zlib.crc32(t.trade_id.encode()))
        page = chosen[offset : offset + limit]
        more = offset + limit < len(chosen)
        cursor = base64.b64encode(f"{snapshot}:{offset + limit}".encode()).decode() if more else ""
        return {"trades": [rest_trade(t) for t in page], "cursor": cursor}

    def _markets_page(self, query: dict[str, str]) -> dict[str, Any]:
        wanted = [t for t in query.get("tickers", "").split(",") if t] or list(TICKERS)
        self.markets_batches.append(wanted)
        markets = [m for m in (self._market(t) for t in wanted) if m]
        limit = min(int(query.get("limit", "100")), self.markets_page_size)
        offset = int(query.get("cursor") or "0")
        page = markets[offset : offset + limit]
        cursor = str(offset + limit) if offset + limit < len(markets) else ""
        return {"markets": page, "cursor": cursor}

    def _market(self, ticker: str) -> dict[str, Any] | None:
        if not ticker or ticker.startswith("UNKNOWN"):
            return None
        return {
            "ticker": ticker,
            "event_ticker": event_of(ticker),
            "market_type": "binary",
            "yes_sub_title": ticker.rsplit("-", 1)[-1],
            "no_sub_title": ticker.rsplit("-", 1)[-1],
            "status": "active",
            "close_time": "2026-12-31T23:00:00Z",
            "title": "deprecated market title",
        }

    def _event(self, event_ticker: str) -> dict[str, Any] | None:
        if event_ticker.startswith("UNKNOWN"):
            return None
        return {
            "event_ticker": event_ticker,
            "series_ticker": series_of(event_ticker),
            "title": f"Event {event_ticker}",
            "sub_title": "",
        }

    def _series(self, series_ticker: str) -> dict[str, Any]:
        return {
            "ticker": series_ticker,
            "title": f"Series {series_ticker}",
            "category": CATEGORIES.get(series_ticker, "Other"),
        }


async def eventually(predicate: Callable[[], bool], *, timeout_s: float = 60.0, poll_s: float = 0.1) -> None:
    """Wait (in trio time) until ``predicate()`` holds; fail after ``timeout_s``."""
    with trio.fail_after(timeout_s):
        for _ in itertools.count():
            if predicate():
                return
            await trio.sleep(poll_s)


@functools.cache
def session_private_key() -> rsa.RSAPrivateKey:
    """An RSA key made for this test session only; never written into the repository."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_test_key(directory: Path, key: rsa.RSAPrivateKey | None = None) -> Path:
    """The test key as an unencrypted PEM file under ``directory`` (a pytest tmp_path)."""
    path = directory / "kalshi-test-key.pem"
    path.write_bytes(
        (key or session_private_key()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path

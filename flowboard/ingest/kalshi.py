"""The real Kalshi feed: WebSocket ``trade`` channel plus REST backfill, as Kalshi documents them.

``serve_kalshi`` runs forever and forwards every Kalshi trade exactly once, parsed, as a
:class:`~flowboard.ingest.feed.Received` (with the message's text, for ``flowboard record``).
Trades recovered over REST are forwarded the same way, without text.

Per connection: connect (signed when a key is configured), subscribe to ``trade``,
read. Trio-websocket answers Kalshi's pings. The module reads the envelope of every
message itself: ``subscribed`` (new ``sid``), ``error`` (10/25: resubscribe; 9: auth),
sequence gaps per ``sid``, unknown types and garbage (counted, not forwarded).

Losses are repaired over REST: after a gap, a reconnect, a resubscribe, and at
start-up from the last stored trade, plus a periodic reconciliation of the recent
history for losses that leave no gap. Everything forwarded goes through one
de-duplication by ``trade_id``.

The connection is dead when no byte at all (no frame, no ping) arrives for
``stall_timeout_s``; quiet markets alone never trigger a reconnect.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Literal, NoReturn, cast
from urllib.parse import urlsplit

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from flowboard.errors import ConfigError, MalformedMessage, RestUnavailable
from flowboard.ingest.backfill import RecentIds, fetch_trades
from flowboard.ingest.feed import FeedCounters, FeedItem, Received
from flowboard.ingest.kalshi_auth import SigningKey, load_signing_key
from flowboard.ingest.kalshi_format import decode_message, trade_from_msg
from flowboard.ingest.kalshi_rest import RestClient, backoff_delay, open_rest_client
from flowboard.logs import ThrottledLog
from flowboard.model import Trade
from flowboard.options import flag, parse_list

log = logging.getLogger(__name__)

#: (WebSocket URL, REST base URL) per environment.
ENVIRONMENTS: dict[str, tuple[str, str]] = {
    "prod": (
        "wss://external-api-ws.kalshi.com/trade-api/ws/v2",
        "https://external-api.kalshi.com/trade-api/v2",
    ),
    "demo": (
        "wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2",
        "https://external-api.demo.kalshi.co/trade-api/v2",
    ),
}

#: Error codes after which the subscription is gone and must be made again.
RESUBSCRIBE_CODES = frozenset({10, 25})
AUTH_REQUIRED_CODE = 9

#: The Kalshi flags are taken by ``flowboard serve`` and ``flowboard record``.
_BOTH = ("serve", "record")

#: Message types that are replies to our own commands: nothing to do.
_REPLY_TYPES = frozenset({"unsubscribed", "ok"})


def _check_url(flag: str, url: str | None, schemes: tuple[str, ...]) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise ConfigError(
            f"{flag}: expected a {'/'.join(schemes)} URL with a valid port, got {url!r}"
        ) from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{flag}: expected a {'/'.join(schemes)}:// URL with a host, got {url!r}")


@attrs.frozen
class KalshiConfig:
    """Everything the Kalshi source needs; durations in seconds, rates per second."""

    env: Literal["prod", "demo"] = flag(
        "prod", "--kalshi-env", "Kalshi environment: prod or demo", commands=_BOTH
    )
    ws_url: str | None = flag(
        None, "--kalshi-ws-url", "override the environment's WebSocket URL", commands=_BOTH
    )
    rest_url: str | None = flag(
        None, "--kalshi-rest-url", "override the environment's REST URL (.../trade-api/v2)", commands=_BOTH
    )
    key_id: str = flag(
        "", "--kalshi-key-id", "Kalshi API key id (connects unsigned without one)", commands=_BOTH
    )
    # PEM RSA key; unsigned connection when None. The path only: never its content.
    private_key_path: str | None = flag(
        None, "--kalshi-private-key", "path of the PEM private key of that API key id", commands=_BOTH
    )
    markets: tuple[str, ...] = flag(
        (),
        "--markets",
        "only these market tickers, comma-separated (default: all)",
        parse_list,
        commands=_BOTH,
    )
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    backoff_reset_after_s: float = 30.0  # a subscribed connection that lived this long resets backoff
    connect_timeout_s: float = 15.0
    close_timeout_s: float = 3.0
    stall_timeout_s: float = 35.0  # pings come every ~10 s: three missed pings and some slack
    reconcile_interval_s: float = 60.0  # 0 turns reconciliation off
    reconcile_lookback_s: float | None = None  # default: 2 x interval + 30 s
    backfill_margin_s: float = 5.0  # re-read this much before the last trade seen
    max_backfill_s: float = 24 * 3600.0  # never reach further back than this
    # Forget forwarded ids this long (trade time) after newer trades: a duplicate comes from a
    # reconciliation (lookback_s, 150 s) or a backfill (backfill_margin_s before the newest
    # trade); older ones are the store's to refuse (pipeline.look_up_old_trades).
    dedup_ttl_s: float = 600.0
    rest_rate_per_s: float = 5.0  # backfill + reconciliation; Kalshi allows ~20 reads/s in all
    message_queue_size: int = 1024  # frames buffered by trio-websocket before TCP backpressure

    def __attrs_post_init__(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise ConfigError(f"--kalshi-env: expected one of {', '.join(ENVIRONMENTS)}, got {self.env!r}")
        _check_url("--kalshi-ws-url", self.ws_url, ("ws", "wss"))
        _check_url("--kalshi-rest-url", self.rest_url, ("http", "https"))
        if self.key_id and not self.private_key_path:
            raise ConfigError("--kalshi-key-id needs --kalshi-private-key (the PEM file of that key)")
        for name in ("backoff_initial_s", "backoff_max_s", "stall_timeout_s", "rest_rate_per_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Kalshi {name}: expected a positive number, got {getattr(self, name)}")
        if self.reconcile_interval_s < 0:
            raise ConfigError(f"Kalshi reconcile_interval_s: expected >= 0, got {self.reconcile_interval_s}")
        if self.dedup_ttl_s < self.lookback_s + self.backfill_margin_s:
            raise ConfigError(
                f"Kalshi dedup_ttl_s ({self.dedup_ttl_s}) must cover the reconciliation lookback"
                f" ({self.lookback_s} s) or reconciled trades would be forwarded twice"
            )

    def signing_key(self) -> SigningKey | None:
        """The configured key, read now; None for an unsigned connection.

        Raises ``ConfigError`` (naming the file, never quoting it) when it cannot be used.
        """
        return load_signing_key(self.key_id, self.private_key_path) if self.private_key_path else None

    @property
    def resolved_ws_url(self) -> str:
        return self.ws_url or ENVIRONMENTS[self.env][0]

    @property
    def resolved_rest_url(self) -> str:
        return self.rest_url or ENVIRONMENTS[self.env][1]

    @property
    def lookback_s(self) -> float:
        if self.reconcile_lookback_s is not None:
            return self.reconcile_lookback_s
        return 2 * self.reconcile_interval_s + 30.0


@attrs.frozen
class KalshiStatistics:
    """Counters since start. ``trades_forwarded`` includes the ``backfilled`` ones."""

    connects: int
    reconnects: int
    trades_forwarded: int
    backfilled: int
    deduplicated: int
    malformed: int
    unknown_types: int
    gaps: int
    auth_failures: int
    resubscribes: int
    stalls: int
    rest_requests: int
    rest_429s: int


class _ActivityStream(trio.abc.HalfCloseableStream):
    """A transport that notes when bytes last came in: any frame or ping proves the peer alive."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self._inner = inner
        self.last_rx = trio.current_time()  # trio clock: what the stall watchdog measures

    def touch(self) -> None:
        self.last_rx = trio.current_time()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self._inner.receive_some(max_bytes)
        if data:
            self.last_rx = trio.current_time()
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self._inner, trio.abc.HalfCloseableStream):
            await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Stalled(Exception):
    """No byte from Kalshi within the stall timeout."""


class _AuthRefused(Exception):
    """Kalshi answered a subscription with code 9."""


class KalshiIngest:
    """The Kalshi source; :func:`serve_kalshi` runs one and reports it as started."""

    def __init__(
        self,
        config: KalshiConfig,
        send: trio.MemorySendChannel[FeedItem],
        *,
        wall_ms: Callable[[], int],
        counters: FeedCounters | None = None,
        rng: random.Random | None = None,
        last_stored_ts_ms: Callable[[], int | None] | None = None,
        is_known: Callable[[str], bool] | None = None,
        known_ids: Iterable[str] = (),
    ) -> None:
        self._config = config
        self._send = send
        self._wall_ms = wall_ms
        self._counters = counters if counters is not None else FeedCounters()  # the server's metrics
        self._rng = rng if rng is not None else random.Random()
        self._last_stored_ts_ms = last_stored_ts_ms  # start-up backfill from the store
        self._is_known = is_known  # store lookup, for REST trades only (live ones are new)
        self._recent = RecentIds(ttl_ms=int(config.dedup_ttl_s * 1000))
        seed_ts = wall_ms()
        for trade_id in known_ids:
            self._recent.add(trade_id, seed_ts)
        self._rest: RestClient | None = None
        # Newest trade time forwarded: where a backfill resumes from.
        self._last_trade_ts_ms: int | None = None
        # Set when the stream lost (or may have lost) trades; backfill from here once subscribed.
        self._resume_from_ms: int | None = None
        # Earliest start of the backfills asked for and not yet run.
        self._backfill_from_ms: int | None = None
        self._backfill_wanted = trio.Event()
        self._seq: dict[int, int] = {}  # sid -> last seq seen
        self._next_command_id = 1  # per connection
        self._subscribed = False  # this connection has an active trade subscription
        self._last_message_ms = 0  # wall time of this connection's latest message
        self._connects = 0
        self._trades_forwarded = 0
        self._backfilled = 0
        self._deduplicated = 0
        self._malformed = 0
        self._unknown_types = 0
        self._gaps = 0
        self._auth_failures = 0
        self._resubscribes = 0
        # What the feed does to us (error messages, ended subscriptions, sequence gaps) is its
        # input: logged, but never faster than the limit.
        self._feed_log = ThrottledLog(log, "feed")
        self._stalls = 0

    def statistics(self) -> KalshiStatistics:
        rest = self._rest.statistics() if self._rest is not None else None
        return KalshiStatistics(
            connects=self._connects,
            reconnects=max(0, self._connects - 1),
            trades_forwarded=self._trades_forwarded,
            backfilled=self._backfilled,
            deduplicated=self._deduplicated,
            malformed=self._malformed,
            unknown_types=self._unknown_types,
            gaps=self._gaps,
            auth_failures=self._auth_failures,
            resubscribes=self._resubscribes,
            stalls=self._stalls,
            rest_requests=rest.requests if rest else 0,
            rest_429s=rest.rate_limited if rest else 0,
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[KalshiIngest] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        config = self._config
        signing_key = config.signing_key()
        async with (
            open_rest_client(
                config.resolved_rest_url,
                signing_key=signing_key,
                wall_ms=self._wall_ms,
                rate_per_s=config.rest_rate_per_s,
                rng=self._rng,
            ) as rest,
            trio.open_nursery() as nursery,
        ):
            self._rest = rest
            nursery.start_soon(self._backfill_worker, rest)
            if config.reconcile_interval_s > 0:
                nursery.start_soon(self._reconciler)
            last_stored = self._last_stored_ts_ms() if self._last_stored_ts_ms is not None else None
            if last_stored is not None:
                self._last_trade_ts_ms = last_stored
                self._want_backfill(last_stored - int(config.backfill_margin_s * 1000))
            log.info("Kalshi feed: %s (%s)", config.resolved_ws_url, "signed" if signing_key else "unsigned")
            task_status.started(self)
            await self._connect_forever(signing_key)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ connection

    async def _connect_forever(self, signing_key: SigningKey | None) -> NoReturn:
        config = self._config
        attempt = 0
        while True:
            started = trio.current_time()
            healthy = await self._one_connection(signing_key)
            if healthy and trio.current_time() - started >= config.backoff_reset_after_s:
                attempt = 0
            delay = backoff_delay(
                attempt, initial_s=config.backoff_initial_s, max_s=config.backoff_max_s, rng=self._rng
            )
            attempt += 1
            log.info("Kalshi: reconnecting in %.1f s", delay)
            await trio.sleep(delay)

    async def _one_connection(self, signing_key: SigningKey | None) -> bool:
        """Connect, subscribe and read until the connection ends; True if it got subscribed."""
        config = self._config
        url = urlsplit(config.resolved_ws_url)
        secure = url.scheme == "wss"
        host = url.hostname or ""
        port = url.port or (443 if secure else 80)
        resource = (url.path or "/") + (f"?{url.query}" if url.query else "")
        host_header = host if url.port is None else f"{host}:{port}"
        headers: list[tuple[bytes, bytes]] = []
        if signing_key is not None:
            signed = signing_key.headers("GET", url.path or "/", self._wall_ms())
            headers = [(k.encode(), v.encode()) for k, v in signed.items()]
        self._subscribed = False
        try:
            with trio.fail_after(config.connect_timeout_s):
                stream: trio.abc.Stream
                if secure:
                    stream = await trio.open_ssl_over_tcp_stream(host, port, https_compatible=True)
                else:
                    stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            log.warning("Kalshi: cannot reach %s: %s", config.resolved_ws_url, exc or type(exc).__name__)
            return False
        activity = _ActivityStream(stream)
        self._last_message_ms = self._wall_ms()
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(config.connect_timeout_s):
                    ws = await wrap_client_stream(
                        nursery,
                        cast("trio.SocketStream", activity),
                        host_header,
                        resource,
                        extra_headers=headers,
                        message_queue_size=config.message_queue_size,
                    )
                try:
                    await self._session(ws, activity)
                finally:
                    with trio.move_on_after(config.close_timeout_s, shield=True):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        except* ConnectionRejected as group:
            self._report_rejection(cast(ConnectionRejected, group.exceptions[0]))
        except* _Stalled:
            self._stalls += 1
            log.warning("Kalshi: no data and no ping for %.0f s; reconnecting", config.stall_timeout_s)
        except* _AuthRefused:
            pass  # reported where it was read
        except* ConnectionClosed as group:
            log.warning("Kalshi: connection closed: %s", group.exceptions[0])
        except* (HandshakeError, trio.TooSlowError, OSError) as group:
            failure = group.exceptions[0]
            log.warning("Kalshi: connection failed: %s", failure or type(failure).__name__)
        finally:
            with trio.move_on_after(config.close_timeout_s, shield=True):
                await activity.aclose()
            if self._subscribed:
                self._stream_lost(self._last_message_ms)
        return self._subscribed

    def _report_rejection(self, exc: ConnectionRejected) -> None:
        body = (exc.body or b"").decode("utf-8", "replace")[:200]
        if exc.status_code in (401, 403):
            self._auth_failures += 1
            how = (
                "with a signed request: check the key id and private key"
                if self._config.private_key_path
                else ("without a key: Kalshi needs --kalshi-key-id and --kalshi-private-key")
            )
            log.error("Kalshi refused the connection (HTTP %d %s) %s", exc.status_code, body, how)
        else:
            log.warning("Kalshi refused the connection: HTTP %d %s", exc.status_code, body)

    async def _session(self, ws: WebSocketConnection, activity: _ActivityStream) -> None:
        self._connects += 1
        self._next_command_id = 1
        self._seq.clear()
        if self._connects > 1:
            log.info("Kalshi: reconnected")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watchdog, activity)
            await self._subscribe(ws)
            await self._read_loop(ws, activity)
            nursery.cancel_scope.cancel()

    async def _watchdog(self, activity: _ActivityStream) -> None:
        timeout = self._config.stall_timeout_s
        while True:
            deadline = activity.last_rx + timeout
            if trio.current_time() >= deadline:
                raise _Stalled
            await trio.sleep_until(deadline)

    async def _subscribe(self, ws: WebSocketConnection) -> None:
        params: dict[str, object] = {"channels": ["trade"]}
        if self._config.markets:
            params["market_tickers"] = list(self._config.markets)
        await self._command(ws, "subscribe", params)

    async def _command(self, ws: WebSocketConnection, cmd: str, params: dict[str, object]) -> None:
        command = {"id": self._next_command_id, "cmd": cmd, "params": params}
        self._next_command_id += 1
        await ws.send_message(orjson.dumps(command).decode())

    async def _read_loop(self, ws: WebSocketConnection, activity: _ActivityStream) -> None:
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed as exc:
                log.warning("Kalshi: connection closed: %s", exc.reason)
                return
            self._last_message_ms = self._wall_ms()
            if isinstance(raw, bytes):
                self._count_malformed(
                    MalformedMessage(f"message: expected text, got {len(raw)} binary bytes")
                )
                continue
            try:
                message = decode_message(raw)
            except MalformedMessage as exc:
                self._count_malformed(exc)
                continue
            self._counters.message(message.type)
            if message.sid is not None and message.seq is not None:
                self._check_seq(message.sid, message.seq)
            if message.type == "trade":
                try:
                    trade = trade_from_msg(message.msg)
                except MalformedMessage as exc:
                    self._count_malformed(exc)
                    continue
                await self._forward(trade, raw, backfilled=False)
                # Waiting on the pipeline is not silence from Kalshi.
                activity.touch()
            elif message.type == "subscribed":
                sid = message.msg.get("sid")
                if isinstance(sid, int):
                    self._seq[sid] = 0
                self._subscribed = True
                if self._resume_from_ms is not None:
                    self._want_backfill(self._resume_from_ms)
                    self._resume_from_ms = None
            elif message.type == "error":
                await self._on_error(ws, message.msg)
            elif message.type not in _REPLY_TYPES:
                self._unknown_types += 1
                log.debug("Kalshi: ignoring message type %r", message.type)

    async def _on_error(self, ws: WebSocketConnection, msg: object) -> None:
        body = msg if isinstance(msg, dict) else {}
        code = body.get("code")
        text = body.get("msg", "")
        if code in RESUBSCRIBE_CODES:
            self._resubscribes += 1
            self._feed_log.warning("Kalshi: subscription ended (code %s: %.200s); resubscribing", code, text)
            self._stream_lost(self._wall_ms())
            await self._subscribe(ws)
        elif code == AUTH_REQUIRED_CODE:
            self._auth_failures += 1
            log.error(
                "Kalshi: authentication required (code 9: %s); configure --kalshi-key-id and"
                " --kalshi-private-key",
                text,
            )
            raise _AuthRefused
        else:
            self._feed_log.warning("Kalshi: error code %s: %.200s", code, text)

    def _check_seq(self, sid: int, seq: int) -> None:
        last = self._seq.get(sid)
        self._seq[sid] = max(seq, last or 0)
        if last is not None and seq > last + 1:
            self._gaps += 1
            self._feed_log.info("Kalshi: sequence gap on sid %d (%d -> %d); backfilling", sid, last, seq)
            self._want_backfill(self._resume_point())

    # ------------------------------------------------------------------ forwarding

    async def _forward(self, trade: Trade, text: str | None, *, backfilled: bool) -> None:
        if self._config.markets and trade.ticker not in self._config.markets:
            return
        known = backfilled and self._is_known is not None and self._is_known(trade.trade_id)
        # Check-and-mark before the await below, so a concurrent path sees it as sent.
        if known or not self._recent.add(trade.trade_id, trade.ts_ms):
            self._deduplicated += 1
            return
        if self._last_trade_ts_ms is None or trade.ts_ms > self._last_trade_ts_ms:
            self._last_trade_ts_ms = trade.ts_ms
        self._trades_forwarded += 1
        if backfilled:
            self._backfilled += 1
        await self._send.send(Received(received_ms=self._wall_ms(), trade=trade, raw=text))

    def _count_malformed(self, exc: MalformedMessage) -> None:
        self._malformed += 1
        self._counters.malformed()
        log.debug("Kalshi: skipping a malformed message: %s", exc)

    # ------------------------------------------------------------------ backfill

    def _resume_point(self, silent_since_ms: int | None = None) -> int:
        """Where a backfill starts: just before the newest trade forwarded, or else before the
        stream went silent."""
        if self._last_trade_ts_ms is not None:
            last = self._last_trade_ts_ms
        else:
            last = silent_since_ms if silent_since_ms is not None else self._wall_ms()
        return last - int(self._config.backfill_margin_s * 1000)

    def _stream_lost(self, silent_since_ms: int) -> None:
        point = self._resume_point(silent_since_ms)
        if self._resume_from_ms is None or point < self._resume_from_ms:
            self._resume_from_ms = point

    def _want_backfill(self, from_ms: int) -> None:
        if self._backfill_from_ms is None or from_ms < self._backfill_from_ms:
            self._backfill_from_ms = from_ms
        self._backfill_wanted.set()

    async def _reconciler(self) -> None:
        lookback_ms = int(self._config.lookback_s * 1000)
        while True:
            await trio.sleep(self._config.reconcile_interval_s)
            self._want_backfill(self._wall_ms() - lookback_ms)

    async def _backfill_worker(self, rest: RestClient) -> None:
        config = self._config
        failures = 0
        while True:
            await self._backfill_wanted.wait()
            self._backfill_wanted = trio.Event()
            from_ms = self._backfill_from_ms
            self._backfill_from_ms = None
            if from_ms is None:
                continue
            now = self._wall_ms()
            from_ms = max(from_ms, now - int(config.max_backfill_s * 1000))
            try:
                trades = await fetch_trades(
                    rest,
                    min_ts_s=from_ms // 1000 - 1,
                    max_ts_s=now // 1000 + 1,
                    on_malformed=self._count_malformed,
                )
            except RestUnavailable as exc:
                failures += 1
                log.warning("Kalshi: backfill from %d failed (%s); will retry", from_ms, exc)
                self._want_backfill(from_ms)
                await trio.sleep(
                    backoff_delay(
                        failures,
                        initial_s=config.backoff_initial_s,
                        max_s=config.backoff_max_s,
                        rng=self._rng,
                    )
                )
                continue
            failures = 0
            for trade in trades:
                await self._forward(trade, None, backfilled=True)


async def serve_kalshi(
    config: KalshiConfig,
    send: trio.MemorySendChannel[FeedItem],
    *,
    wall_ms: Callable[[], int],
    counters: FeedCounters | None = None,
    rng: random.Random | None = None,
    last_stored_ts_ms: Callable[[], int | None] | None = None,
    is_known: Callable[[str], bool] | None = None,
    known_ids: Iterable[str] = (),
    task_status: trio.TaskStatus[KalshiIngest] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Forward Kalshi's trades to ``send`` forever; ``nursery.start`` returns the :class:`KalshiIngest`.

    Raises ``ConfigError`` before reporting started when the key cannot be loaded.
    ``last_stored_ts_ms`` (called once) starts with a backfill from the newest stored
    trade; ``is_known``/``known_ids`` keep that backfill from repeating stored trades.
    """
    ingest = KalshiIngest(
        config,
        send,
        wall_ms=wall_ms,
        counters=counters,
        rng=rng,
        last_stored_ts_ms=last_stored_ts_ms,
        is_known=is_known,
        known_ids=known_ids,
    )
    await ingest.serve(task_status=task_status)

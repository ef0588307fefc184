"""Wiring: one nursery that owns the source, the aggregator loop, the clock and the HTTP server.

Data flows one way (docs/architecture.md): source (parses, in ``ingest/``) -> FeedItem channel ->
aggregate -> publish (hub) -> per-client sessions -> send loops. Everything here only moves
data between the pure parts; start-up order is enforced with ``nursery.start`` so the server
reports ready (``task_status.started(runtime)``, ``/readyz``) only when every part runs.

One builder (:func:`run_server`) assembles the runtime for every role: ``all`` and ``ingest``
run the source, the aggregation, the store's writer (and, for ``ingest``, the publisher to
Redis); ``edge`` runs a follower of the ingest's stream instead. Each part gets only its own
section of the configuration.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import wrap_app

from flowboard.aggregate.aggregator import ALERTS_KEPT, Aggregator, dedup_start_ms, retention_start_ms
from flowboard.aggregate.events import AlertRaised, Event, MarketAdded, TradeAdded
from flowboard.config import Config, ServerConfig, SourceConfig
from flowboard.errors import ConfigError, StoreError
from flowboard.ingest.feed import FeedCounters, FeedItem, Received
from flowboard.ingest.kalshi import KalshiConfig
from flowboard.ingest.metadata import serve_metadata
from flowboard.ingest.recording import ReplayClock, open_replay_clock
from flowboard.ingest.simulator import Simulator
from flowboard.ingest.sources import open_source
from flowboard.logs import ThrottledLog
from flowboard.model import MarketMeta, Trade, wall_clock_ms
from flowboard.protocol.v2 import MAX_COMMAND_BYTES
from flowboard.scaleout import redis_io
from flowboard.scaleout.redis_io import Follower, Outbox, PublisherStats, StreamJournal
from flowboard.scaleout.stream import JournalingAggregator
from flowboard.server import deflate
from flowboard.server import websocket as ws_v2
from flowboard.server.app import create_app
from flowboard.server.coalesce import Coalescer
from flowboard.server.hub import Hub
from flowboard.server.listener import serve_hypercorn
from flowboard.server.metrics import Metrics
from flowboard.server.runtime import PROTOCOLS, Runtime
from flowboard.store import Dropped, Store, open_store, serve_writer

log = logging.getLogger(__name__)
#: Store failures outside the trade writer (which logs its own): an outage must not flood the log.
_store_log = ThrottledLog(log, "store")

#: The feed's message types counted under their own label (Kalshi's WebSocket channels and
#: replies); any other is "other", so that a feed sending ever new types cannot grow /metrics
#: (a label set is kept for the process's life).
_FEED_MESSAGE_TYPES = frozenset(
    {
        "trade",
        "ticker",
        "ticker_v2",
        "orderbook_snapshot",
        "orderbook_delta",
        "fill",
        "market_lifecycle_v2",
        "event_lifecycle",
        "market_positions",
        "multivariate_lookup",
        "communications",
        "subscribed",
        "unsubscribed",
        "list_subscriptions",
        "ok",
        "error",
    }
)


def feed_message_label(kind: str) -> str:
    """The ``flowboard_feed_messages`` label of a feed message of type ``kind``."""
    return kind if kind in _FEED_MESSAGE_TYPES else "other"


class Ingestor:
    """Parsed trade -> aggregator events (and the store), unless it is a duplicate."""

    def __init__(
        self,
        agg: Aggregator,
        metrics: Metrics,
        *,
        store: Store | None = None,
        on_new_market: Callable[[str], None] | None = None,
    ) -> None:
        self.agg = agg
        self.metrics = metrics
        self.store = store
        # Called with each ticker seen for the first time (the metadata fetcher's queue).
        self.on_new_market = on_new_market

    def accept(self, trade: Trade, now_ms: int, lookup: StoreLookup | None = None) -> list[Event]:
        """Aggregate and store ``trade`` unless it is a duplicate. ``lookup`` holds the store's
        answer for the trades older than the ids the aggregator remembers."""
        absent_from_store = False
        if lookup is not None and trade.trade_id in lookup.checked:
            if trade.trade_id in lookup.unverified or self._was_dropped(trade) == "maybe":
                # The store is the record of every trade and its unique key refuses a duplicate,
                # so it gets the trade; the views do not, as it might be counted twice there.
                self.metrics.unverified.inc()
                self._store_again(trade, lookup)
                return []
            if trade.trade_id not in lookup.stored and self._was_dropped(trade) == "yes":
                # Counted when it first came; the store's full queue dropped it.
                self.metrics.duplicates.inc()
                self._store_again(trade, lookup)
                return []
            absent_from_store = trade.trade_id not in lookup.stored
        events = self.agg.add_trade(trade, now_ms, absent_from_store=absent_from_store)
        accepted = False
        for event in events:
            if isinstance(event, TradeAdded):
                accepted = True
            elif isinstance(event, MarketAdded) and self.on_new_market is not None:
                self.on_new_market(event.ticker)
            elif isinstance(event, AlertRaised) and self.store is not None:
                # After its trade: the writer commits trades before the alerts queued behind them.
                self.store.offer_alerts((event.alert,))
        if accepted:
            self.metrics.trades_ingested.inc()
            self._store_again(trade, lookup)
        else:
            self.metrics.duplicates.inc()
            if self.store is not None and self._was_dropped(trade) != "no":
                # A duplicate to the views, but maybe the only copy the store will get.
                self.store.offer((trade,))
        return events

    def _was_dropped(self, trade: Trade) -> Dropped:
        return "no" if self.store is None else self.store.was_dropped(trade)

    def _store_again(self, trade: Trade, lookup: StoreLookup | None) -> None:
        if self.store is not None:
            self.store.offer((trade,))
        if lookup is not None:
            # Stored now, as far as the rest of this batch is concerned.
            lookup.stored.add(trade.trade_id)


@attrs.define
class StoreLookup:
    """What the store said about the trade ids a batch asked it for."""

    checked: set[str] = attrs.Factory(set)
    stored: set[str] = attrs.Factory(set)  # committed or queued: a duplicate
    unverified: set[str] = attrs.Factory(set)  # the store could not answer


async def look_up_old_trades(
    agg: Aggregator,
    store: Store | None,
    trades: Sequence[Trade],
    wall_ms: Callable[[], int],
    *,
    timeout_s: float,
) -> tuple[int, StoreLookup]:
    """The time to aggregate ``trades`` at, and the store's answer for those of them that the
    aggregator can no longer tell from a duplicate at that time (``needs_store_check``).

    The clock moves while the store answers, and can carry more trades past the horizon:
    asked again until nothing new needs asking, so there is no await between the last
    answer and aggregating at the time returned. A lookup that fails or takes longer than
    ``timeout_s`` leaves its trades unverified (the store still gets them).
    """
    lookup = StoreLookup()
    while True:
        now = wall_ms()
        unchecked = {t.trade_id for t in trades if agg.needs_store_check(t, now)} - lookup.checked
        if not unchecked:
            return now, lookup
        lookup.checked |= unchecked
        if store is None:
            lookup.unverified |= unchecked
            continue
        stored: set[str] | None = None
        try:
            with trio.move_on_after(timeout_s):
                stored = await store.stored_trade_ids(unchecked)
        except StoreError as exc:
            _store_log.warning(
                "store lookup of %d late trades failed (%s): stored, not shown", len(unchecked), exc
            )
        else:
            if stored is None:
                _store_log.warning(
                    "store lookup of %d late trades took over %.1f s: stored, not shown",
                    len(unchecked),
                    timeout_s,
                )
        if stored is None:
            lookup.unverified |= unchecked
        else:
            lookup.stored |= stored


def bind_socket(
    host: str,
    port: int,
    *,
    backlog: int,
    reuse_port: bool = False,
    stall_timeout_s: float | None = None,
) -> socket.socket:
    """The listening socket, or ConfigError with one line saying what to change.

    ``reuse_port``: SO_REUSEPORT, so that several processes (``--workers``) listen on one port
    and the kernel spreads the connections over them.

    ``stall_timeout_s``: TCP_USER_TIMEOUT, inherited by every accepted connection. Hypercorn
    writes to a socket in a shielded ``send_all``, so a peer that stops reading (zero window)
    would pin its connection task, and shutdown, forever; the kernel aborts such a connection
    once nothing has moved for this long, which frees the task."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address this machine can listen on ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if stall_timeout_s is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(stall_timeout_s * 1000))
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use: stop the other process or pass --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hyper = HypercornConfig()
    hyper.websocket_max_message_size = MAX_COMMAND_BYTES
    hyper.graceful_timeout = config.graceful_timeout_s
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")
    return hyper


def _warm_start(runtime: Runtime, ingestor: Ingestor, sim: Simulator) -> None:
    """An empty store: the simulator's backdated trades, through the same ingest, before serving."""
    now = runtime.wall_ms()
    for trade in sim.history(now, runtime.config.source.sim_history_s):
        ingestor.accept(trade, trade.ts_ms)
    runtime.agg.advance(now)


async def _rebuild(runtime: Runtime, store: Store) -> int:
    """Restart: windows, sparklines, analytics, top trades, today and tapes from the stored
    trades, as if replayed in trade-time order (``Aggregator.restore``). Returns how many."""
    agg = runtime.agg
    now = runtime.wall_ms()
    summary = await store.load_summary_since(
        retention_start_ms(now, agg.window_ms),
        ids_since_ms=dedup_start_ms(now, agg.dedup_horizon_ms),
        recent_since_ms=now - agg.restore_horizon_ms + 1,
        tape_size=agg.tape_size,
        per_market=agg.history_len,
    )
    agg.restore(now, summary.minutes, summary.recent)
    # Stored alerts are shown again but never raised again: restore() only warms the detector.
    agg.restore_alerts(await store.load_alerts(ALERTS_KEPT))
    # Only the markets the retained trades name: the store describes every market it ever saw.
    for meta in await store.load_meta([agg.ticker(market) for market in agg.market_ids()]):
        agg.set_meta(meta)
    return agg.trades_total


async def _aggregate(
    runtime: Runtime,
    ingestor: Ingestor,
    receive: trio.MemoryReceiveChannel[FeedItem],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Aggregate what the source sends, in passes: one publish (one wake-up per client) covers
    everything a pass took from the channel, which is what batches a burst."""
    drain_limit = runtime.config.source.drain_limit
    task_status.started()
    async for first in receive:
        batch = [first]
        while len(batch) < drain_limit:
            try:
                batch.append(receive.receive_nowait())
            except trio.WouldBlock:
                break
        trades = [item.trade for item in batch if isinstance(item, Received)]
        # Every trade behind a late one waits for this answer: the wait is bounded.
        now, lookup = await look_up_old_trades(
            runtime.agg,
            runtime.store,
            trades,
            runtime.wall_ms,
            timeout_s=runtime.config.store.lookup_timeout_s,
        )
        events: list[Event] = []
        for item in batch:
            if isinstance(item, Received):
                events.extend(ingestor.accept(item.trade, now, lookup))
            else:
                events.extend(runtime.agg.set_meta(item))
                runtime.metas_to_save.append(item)
        runtime.hub.publish(events, now)


async def _tick(runtime: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Expire windows and roll the clock on whole seconds, trades or not."""
    tick_ms = int(runtime.config.server.tick_s * 1000)
    task_status.started()
    while True:
        now = runtime.wall_ms()
        await trio.sleep((tick_ms - now % tick_ms) / 1000)
        now = runtime.wall_ms()
        runtime.hub.publish(runtime.agg.advance(now), now)


async def _pace_delivery(
    runtime: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Measure the event loop's lag with a periodic timer, and let the hub coalesce frames on a
    tick while the loop is behind (flowboard.server.coalesce)."""
    hub = runtime.hub
    hub.busy_clock = trio.current_time
    coalescer = Coalescer()
    lag_histogram = runtime.metrics.loop_lag
    runtime.metrics.gauge(
        "flowboard_coalesce_interval_seconds",
        "Seconds frames wait for the next send (0: sent at once)",
        lambda: hub.coalesce_interval_s,
    )
    lag_period_s = runtime.config.delivery.lag_period_s
    task_status.started()
    period = lag_period_s
    due = trio.current_time() + period
    busy_before = hub.busy_s
    while True:
        await trio.sleep_until(due)
        woke = trio.current_time()
        lag = woke - due
        lag_histogram.observe(lag)
        hub.send(runtime.wall_ms())
        busy_share = (hub.busy_s - busy_before) / (period + lag)
        busy_before = hub.busy_s
        hub.coalesce_interval_s = coalescer.observe(
            lag_s=lag, busy_share=busy_share, own_pass_s=hub.longest_pass_s, period_s=period + lag
        )
        hub.longest_pass_s = 0.0
        period = hub.coalesce_interval_s or lag_period_s
        due = woke + period


async def _serve_http(
    runtime: Runtime,
    sock: socket.socket,
    stop_http: trio.Event,
    done: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    app = create_app(runtime)
    await serve_hypercorn(
        wrap_app(app, 0, "asgi"),
        _hypercorn_config(runtime.config.server),
        [sock],
        shutdown_trigger=stop_http.wait,
        on_accept_failure=runtime.metrics.accept_failures.inc,
        task_status=task_status,
    )
    # The HTTP server has finished its graceful shutdown: stop everything else too.
    done.cancel()


async def _shutdown_when_asked(runtime: Runtime, stop_http: trio.Event) -> None:
    await runtime.stop_requested.wait()
    log.info("shutting down: closing client connections")
    runtime.not_ready.add("shutting down")
    runtime.hub.begin_shutdown()
    with trio.move_on_after(runtime.config.server.shutdown_drain_s):
        await runtime.hub.drained.wait()
    stop_http.set()


def _register_gauges(runtime: Runtime, receive: trio.MemoryReceiveChannel[FeedItem] | None) -> None:
    hub = runtime.hub
    metrics = runtime.metrics
    hub.count_group_frame = ws_v2.group_frame_counter(metrics)
    metrics.gauge_by_label(
        "flowboard_clients",
        "Open WebSocket connections, by protocol",
        "protocol",
        {protocol: partial(runtime.open_connections.__getitem__, protocol) for protocol in PROTOCOLS},
    )
    metrics.gauge(
        "flowboard_client_groups", "Groups of v2 clients sharing frames", lambda: hub.statistics().groups
    )
    metrics.gauge(
        "flowboard_clients_grouped",
        "v2 clients receiving a group's frames",
        lambda: hub.statistics().grouped_clients,
    )
    metrics.gauge("flowboard_seq", "Sequence number of the latest event", lambda: hub.seq)
    _register_aggregator_gauges(runtime)
    if receive is not None:
        metrics.gauge(
            "flowboard_ingest_queue_depth",
            "Feed messages waiting to be aggregated",
            lambda: receive.statistics().current_buffer_used,
        )
    metrics.gauge(
        "flowboard_client_pending_trades_max",
        "Largest number of trades waiting for one client",
        lambda: hub.statistics().pending_trades_max,
    )
    store = runtime.store
    if store is not None:
        metrics.gauge(
            "flowboard_store_queued", "Trades waiting to be written", lambda: store.statistics().queued
        )
        metrics.gauge(
            "flowboard_store_written", "Trades written since start", lambda: store.statistics().written_total
        )
        metrics.gauge(
            "flowboard_store_dropped",
            "Trades the store queue could not hold",
            lambda: store.statistics().dropped,
        )
        metrics.gauge("flowboard_store_failures", "Failed store writes", lambda: store.statistics().failures)
        metrics.gauge(
            "flowboard_store_healthy", "1 when the store keeps up", lambda: store.statistics().healthy
        )
    metrics.gauge(
        "flowboard_client_pending_trades_total",
        "Trades waiting for all clients together",
        lambda: hub.statistics().pending_trades_total,
    )


async def run_server(
    config: Config,
    *,
    wall_ms: Callable[[], int] = wall_clock_ms,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Flowboard until ``runtime.request_stop()`` (or cancellation), in
    ``config.scaleout.role``: all, ingest (also publishing to Redis) or edge (serving from
    Redis; no source, no writer)."""
    if config.source.kind == "kalshi":
        # A bad key stops start-up here, before the port and the store are taken.
        config.kalshi.signing_key()
    role = config.scaleout.role
    sock = bind_socket(
        config.server.host,
        config.server.port,
        reuse_port=config.scaleout.reuse_port,
        stall_timeout_s=config.delivery.stall_timeout_s,
        backlog=config.server.listen_backlog,
    )
    try:
        # An edge only reads the store: it shares it with the ingest that writes it.
        async with open_store(config.store.db, config=config.store, exclusive=role != "edge") as store:
            await _run(config, sock, store, wall_ms, task_status)
    finally:
        sock.close()


async def _run(
    config: Config,
    sock: socket.socket,
    store: Store,
    wall_ms: Callable[[], int],
    task_status: trio.TaskStatus[Runtime],
) -> None:
    """The one builder: the role decides which tasks start, not how the runtime is made."""
    role = config.scaleout.role
    replay_clock = None
    if role != "edge" and config.source.kind == "replay":
        assert config.source.replay_file is not None
        # The dashboard runs on the recording's time: a replay of any age fills the windows.
        replay_clock = await open_replay_clock(
            config.source.replay_file, config.source.speed, default_ms=wall_ms()
        )
        wall_ms = replay_clock.now_ms
    runtime = _build_runtime(config, store, wall_ms)
    _install_deflate(runtime)
    replayed = 0
    if role != "edge":
        replayed = await _rebuild(runtime, store)
        log.info("rebuilt the dashboard from %d stored trades", replayed)
    async with trio.open_nursery() as nursery:
        source = None
        if role == "edge":
            follower = Follower(config.scaleout, runtime)
            _register_gauges(runtime, None)
            _register_follower_gauges(runtime, follower)
            log.info("edge: loading the ingest's snapshot from Redis")
            await nursery.start(follower.serve)
        else:
            source = await _start_ingest(runtime, store, nursery, replay_clock, replayed)
        await nursery.start(_pace_delivery, runtime)
        if source is not None:
            await nursery.start(source)
        stop_http = trio.Event()
        runtime.binds = await nursery.start(_serve_http, runtime, sock, stop_http, nursery.cancel_scope)
        nursery.start_soon(_shutdown_when_asked, runtime, stop_http)
        runtime.not_ready.discard("starting")
        log.info("flowboard%s listening on %s", " edge" if role == "edge" else "", runtime.url)
        task_status.started(runtime)


def _build_runtime(config: Config, store: Store, wall_ms: Callable[[], int]) -> Runtime:
    """The aggregator and hub of ``config.scaleout.role``, in a runtime."""
    delivery = config.delivery
    role = config.scaleout.role
    agg: Aggregator
    journal: StreamJournal | None = None
    if role == "ingest":
        # Every input of the aggregator is journaled and each publish is one stream entry.
        agg = JournalingAggregator(**aggregator_options(config))
        journal = StreamJournal(agg, Outbox(config.scaleout.backlog))
    else:
        agg = Aggregator(**aggregator_options(config))
    # An edge's epoch and seq are the ingest's, from its snapshot (Follower -> Hub.restart).
    epoch = "" if role == "edge" else secrets.token_hex(4)
    hub = Hub(agg, epoch=epoch, ring_size=delivery.ring_size, limits=delivery.session, listener=journal)
    return Runtime(
        config=config, agg=agg, hub=hub, metrics=Metrics(), wall_ms=wall_ms, store=store, journal=journal
    )


async def _start_ingest(
    runtime: Runtime, store: Store, nursery: trio.Nursery, replay_clock: ReplayClock | None, replayed: int
) -> Callable[..., Awaitable[object]]:
    """Roles all and ingest: start the writer, the aggregation and the clock (and the publisher
    to Redis) on the runtime rebuilt from ``replayed`` stored trades; returns the source, to be
    started once delivery runs."""
    config = runtime.config
    agg = runtime.agg
    send, receive = trio.open_memory_channel[FeedItem](config.source.ingest_buffer)
    _register_gauges(runtime, receive)
    meta_send, meta_receive = trio.open_memory_channel[str](config.source.metadata_queue)

    def request_meta(ticker: str) -> None:
        # Never on the hot path: if the fetcher is behind, the ticker is asked for again later.
        with contextlib.suppress(trio.WouldBlock):
            meta_send.send_nowait(ticker)

    kalshi = config.source.kind == "kalshi"
    ingestor = Ingestor(agg, runtime.metrics, store=store, on_new_market=request_meta if kalshi else None)
    await nursery.start(serve_writer, store)
    sim = None
    last_stored = None
    known: set[str] = set()
    if config.source.kind == "sim":
        sim = await _open_simulator(config.source, store, agg, runtime.wall_ms())
        for meta in sim.markets:
            agg.set_meta(meta)
        if replayed == 0:
            _warm_start(runtime, ingestor, sim)
    elif kalshi:
        last_stored = await store.last_trade_ms()
        repeatable_since = _repeatable_since_ms(config.kalshi, runtime.wall_ms(), last_stored)
        known = await store.known_trade_ids_since(repeatable_since)
        for market in agg.market_ids():
            request_meta(agg.ticker(market))
        await nursery.start(
            partial(
                serve_metadata,
                config.kalshi,
                meta_receive,
                partial(_on_meta, runtime),
                wall_ms=runtime.wall_ms,
                still_wanted=lambda ticker: agg.market_id(ticker) is not None,
            )
        )
    if config.source.kind != "sim":
        nursery.start_soon(_save_meta_periodically, runtime)
    source = open_source(
        config.source,
        config.kalshi,
        send,
        wall_ms=runtime.wall_ms,
        counters=FeedCounters(
            message=lambda kind: runtime.metrics.feed_messages.labels(feed_message_label(kind)).inc(),
            malformed=runtime.metrics.malformed.inc,
        ),
        simulator=sim,
        replay_clock=replay_clock,
        last_stored_ts_ms=last_stored,
        known_ids=known,
    )
    runtime.hub.rebase()
    if runtime.journal is not None:
        outbox = runtime.journal.outbox
        publisher = PublisherStats()
        _register_publisher_gauges(runtime, outbox, publisher)
        await nursery.start(redis_io.serve_publisher, config.scaleout, runtime, outbox, publisher)
    await nursery.start(_aggregate, runtime, ingestor, receive)
    await nursery.start(_tick, runtime)
    return source


#: The store's ``source_state`` entry of the simulator: the markets it trades.
SIMULATOR_STATE = "simulator"


def simulator_anchor_ms(saved: str | None, seed: int, n_markets: int, now_ms: int) -> int:
    """The time a simulator's markets are anchored at: the saved one when the saved state is of
    the same seed and market count (a restart), else ``now_ms`` (a new simulation)."""
    try:
        state = json.loads(saved) if saved is not None else None
    except ValueError:
        return now_ms
    if (
        isinstance(state, dict)
        and state.get("seed") == seed
        and state.get("markets") == n_markets
        and isinstance(state.get("anchor_ms"), int)
    ):
        return int(state["anchor_ms"])
    return now_ms


async def _open_simulator(config: SourceConfig, store: Store, agg: Aggregator, now_ms: int) -> Simulator:
    """The simulator, trading the same markets as before a restart (their metadata stored like any
    source's), with a fresh trade sequence that cannot repeat the trade ids already stored."""
    saved = await store.load_source_state(SIMULATOR_STATE)
    anchor_ms = simulator_anchor_ms(saved, config.seed, config.sim_markets, now_ms)
    last_stored = await store.last_trade_ms()
    trade_seed = None if last_stored is None else hash((config.seed, last_stored)) & 0xFFFFFFFF
    sim = Simulator(
        seed=config.seed,
        rate=config.rate,
        n_markets=config.sim_markets,
        start_ms=anchor_ms,
        trade_seed=trade_seed,
    )
    await store.save_source_state(
        SIMULATOR_STATE,
        json.dumps({"seed": config.seed, "markets": config.sim_markets, "anchor_ms": anchor_ms}),
    )
    await store.save_meta(sim.markets)
    last_prices = {}
    for market in agg.market_ids():
        last = agg.last_trade(market)
        if last is not None:
            last_prices[agg.ticker(market)] = last.yes_price
    sim.resume_prices(last_prices)
    return sim


def _repeatable_since_ms(kalshi: KalshiConfig, now_ms: int, last_stored_ms: int | None) -> int:
    """The oldest stored trade Kalshi can send again after a start: the start-up backfill
    re-reads from just before the last stored trade, a reconciliation re-reads its lookback.
    Only these ids are handed to the ingest; any older repeat is refused by the store's word
    (look_up_old_trades), so start-up memory does not grow with the day."""
    # REST asks in whole seconds, from the second before: up to 2 s more than asked for.
    margin_ms = int(kalshi.backfill_margin_s * 1000) + 2_000
    since = now_ms - int(kalshi.lookback_s * 1000) - margin_ms
    return since if last_stored_ms is None else min(since, last_stored_ms - margin_ms)


def aggregator_options(config: Config) -> dict[str, int]:
    """The aggregator's settings a server takes from its configuration (the rest are defaults)."""
    return config.trader.aggregator_options()


def _install_deflate(runtime: Runtime) -> None:
    deflate.install(
        runtime.config.delivery.deflate,
        deflate.DeflateCounters(
            declined_offer=runtime.metrics.deflate_offers_declined.inc,
            oversized_message=runtime.metrics.inflate_refused.inc,
        ),
    )


def _register_aggregator_gauges(runtime: Runtime) -> None:
    """What the aggregator holds: each bounded by a horizon or a size, never by the trades seen."""
    agg = runtime.agg
    metrics = runtime.metrics
    figures = {
        "markets": ("Markets known (ids and metadata)", lambda: agg.statistics().markets),
        "window_trades": ("Trades held in the window", lambda: agg.statistics().trades_in_window),
        "history_trades": (
            "Latest trades held per market, summed",
            lambda: agg.statistics().market_history_trades,
        ),
        "tape_trades": ("Trades held on the tape", lambda: agg.statistics().tape_trades),
        "remembered_ids": (
            "Trade ids remembered for de-duplication (the rest: the store)",
            lambda: agg.statistics().remembered_trade_ids,
        ),
    }
    for name, (documentation, read) in figures.items():
        metrics.gauge(f"flowboard_aggregator_{name}", documentation, read)


def _register_publisher_gauges(runtime: Runtime, outbox: Outbox, stats: PublisherStats) -> None:
    metrics = runtime.metrics
    metrics.gauge("flowboard_redis_connected", "1 while Redis is reachable", lambda: stats.connected)
    metrics.gauge("flowboard_stream_batches", "Batches cut for the stream since start", lambda: outbox.last)
    metrics.gauge("flowboard_stream_waiting", "Batches Redis does not have yet", lambda: outbox.waiting)
    metrics.gauge(
        "flowboard_stream_dropped",
        "Batches dropped before Redis had them (edges resync)",
        lambda: outbox.dropped,
    )
    metrics.gauge("flowboard_snapshots_written", "Snapshots written to Redis", lambda: stats.snapshots)
    metrics.gauge("flowboard_snapshot_bytes", "Size of the latest snapshot", lambda: stats.snapshot_bytes)
    metrics.gauge("flowboard_snapshot_seconds", "Time to take the latest snapshot", lambda: stats.snapshot_s)
    metrics.gauge(
        "flowboard_snapshot_pause_seconds",
        "How long the event loop stopped for the latest snapshot (the fork)",
        lambda: stats.snapshot_pause_s,
    )


def _register_follower_gauges(runtime: Runtime, follower: Follower) -> None:
    metrics = runtime.metrics
    metrics.gauge("flowboard_redis_connected", "1 while Redis is reachable", lambda: follower.connected)
    metrics.gauge("flowboard_stream_applied", "Stream batches applied since start", lambda: follower.batches)
    metrics.gauge("flowboard_snapshot_loads", "Snapshots loaded from Redis", lambda: follower.snapshot_loads)
    metrics.gauge(
        "flowboard_stream_age_ms",
        "Wall clock minus the ingest's clock at the latest batch applied",
        lambda: runtime.wall_ms() - follower.last_batch_ms if follower.last_batch_ms else 0,
    )


def _on_meta(runtime: Runtime, meta: MarketMeta) -> None:
    runtime.metas_to_save.append(meta)
    if runtime.agg.market_id(meta.ticker) is None:
        # Forgotten while it was being described (the fetcher describes markets after their
        # trades): its next trade makes it a market again.
        return
    now = runtime.wall_ms()
    runtime.hub.publish(runtime.agg.set_meta(meta), now)


async def _save_meta_periodically(runtime: Runtime) -> None:
    """Metadata reaches the store in batches, off the hot path. A store that fails keeps the
    batch for the next attempt: the dashboard has the metadata already, only a restart needs it
    stored, and a database outage must not stop the server."""
    assert runtime.store is not None
    interval_s = runtime.config.store.meta_save_interval_s
    while True:
        await trio.sleep(interval_s)
        if runtime.metas_to_save:
            metas, runtime.metas_to_save = runtime.metas_to_save, []
            try:
                await runtime.store.save_meta(metas)
            except StoreError as error:
                _store_log.warning("market metadata not saved (%s); retrying in %g s", error, interval_s)
                # One entry per market, its newest description: the list stays as long as the
                # markets, however long the outage.
                newest = {meta.ticker: meta for meta in [*metas, *runtime.metas_to_save]}
                runtime.metas_to_save = list(newest.values())

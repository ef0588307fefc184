"""The trio side of scale-out: the ingest's publisher and snapshot writer, the edge's follower.

Redis holds two keys (in ``--redis``'s database, under ``--redis-prefix``, ``flowboard`` by default):

- ``flowboard:inputs``, a stream: one entry per ``Hub.publish`` of the ingest (``stream.Batch``),
  id ``STAMP-N``, field ``b``. Every XADD trims it to about ``stream_maxlen`` entries
  (``MAXLEN ~``: Redis trims whole nodes, so a few more may stay). An edge that falls further
  behind than that (or finds a gap after a Redis restart) reloads the snapshot.
- ``flowboard:snapshot``, a hash written whole by one HSET: the aggregator's state, the hub's
  ``epoch`` and ``seq``, and the ``offset`` (stream entry id) it is the state after. The ingest
  rewrites it every ``snapshot_s`` seconds (more rarely when the state is so large that forking
  for it would take more than 2% of the loop) and at once after each (re)connection. A forked
  child pickles the state (``forked.py``), so the loop stops only for the fork.
- ``flowboard:snapshot:0`` and ``:1``: the same, written alternately once per ``resume_horizon_s``,
  so one of them is always between one and two horizons old. An edge that starts loads that one
  and replays the stream from there: its ring then reaches back far enough for the clients of an
  edge that died to resume on it. An edge with a gap loads the latest.

Exactly one ingest per Redis database. Faults: an ingest that loses Redis keeps ingesting and
storing; its batches wait in a bounded ``Outbox`` (oldest dropped first, counted) and are
published when Redis is back, again from the start of what it holds if Redis lost the stream.
An edge that loses Redis keeps serving the state it has, says it is not ready, reconnects with
backoff and reads on from its offset.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Protocol

import attrs
import coredis
import coredis.exceptions
import coredis.retry
import trio
from coredis import PureToken

from flowboard.aggregate.aggregator import Aggregator
from flowboard.aggregate.events import Event
from flowboard.config import ScaleoutConfig
from flowboard.errors import ChildDumpError, StreamFormatError
from flowboard.scaleout.forked import dump_in_child
from flowboard.scaleout.stream import (
    FORMAT_VERSION,
    Batch,
    Input,
    JournalingAggregator,
    Offset,
    apply,
    decode_batch,
    dump_state,
    encode_batch,
    load_state,
)

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What scale-out needs of the server's publisher (``flowboard.server.hub.Hub``)."""

    @property
    def epoch(self) -> str: ...

    @property
    def seq(self) -> int: ...

    def publish(self, events: Iterable[Event], now_ms: int) -> None: ...

    def restart(self, *, epoch: str, seq: int, now_ms: int) -> None: ...


class Node(Protocol):
    """What scale-out needs of a running server (``flowboard.server.runtime.Runtime``): the
    layer above hands itself in, and nothing here imports it."""

    @property
    def agg(self) -> Aggregator: ...

    @property
    def hub(self) -> Publisher: ...

    @property
    def not_ready(self) -> set[str]: ...

    def wall_ms(self) -> int: ...


#: Errors that mean "Redis is not there right now": reconnect with backoff.
REDIS_ERRORS = (coredis.exceptions.ConnectionError, TimeoutError, OSError)

NOT_READY_REDIS = "redis unreachable"
NOT_READY_SNAPSHOT = "waiting for the ingest's snapshot in Redis"

_PUBLISH_CHUNK = 256  # entries per pipelined round trip
_READ_COUNT = 1_000  # entries per XREAD
_BLOCK_MS = 1_000  # an XREAD waits this long for new entries (the ingest ticks every second)
_SNAPSHOT_POLL_S = 0.2
_MAX_SNAPSHOT_SHARE = 0.02  # of the ingest's loop, at most, spent writing snapshots


class _Backoff:
    """0.1 s doubling to 5 s between reconnection attempts; back to 0.1 s after a success."""

    def __init__(self) -> None:
        self._next = 0.1

    def reset(self) -> None:
        self._next = 0.1

    def take(self) -> float:
        delay, self._next = self._next, min(5.0, self._next * 2)
        return delay


@asynccontextmanager
async def open_redis(settings: ScaleoutConfig) -> AsyncIterator[coredis.Redis[bytes]]:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        settings.url,
        retry_policy=coredis.retry.NoRetryPolicy(),
        connect_timeout=settings.connect_timeout_s,
    )
    async with client:
        await client.ping()
        yield client


def _describe(group: BaseExceptionGroup[BaseException]) -> str:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return str(first) or type(first).__name__


# -- ingest --------------------------------------------------------------------------------------


class Outbox:
    """The ingest's batches, numbered from 1, held until Redis has them and a while after
    (``capacity`` in all), so that a Redis that restarted empty gets them again."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._held: deque[tuple[int, bytes]] = deque()
        # Number of the latest batch.
        self.last = 0
        # The latest batch the stream is known to hold.
        self.published = 0
        # Batches that left the outbox before Redis had them.
        self.dropped = 0
        self._changed = trio.Event()

    def cut(self, now_ms: int, seq: int, inputs: tuple[Input, ...]) -> None:
        if not inputs:
            return
        self.last += 1
        batch = Batch(now_ms, seq, inputs)
        self._held.append((self.last, encode_batch(batch)))
        if len(self._held) > self._capacity:
            number, _ = self._held.popleft()
            if number > self.published:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.warning(
                        "redis outbox full: %d batches dropped so far (edges will resync)", self.dropped
                    )
        self._changed.set()

    @property
    def waiting(self) -> int:
        """Batches held that Redis does not have yet."""
        return sum(1 for number, _ in self._held if number > self.published)

    def unpublished(self, limit: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for number, data in reversed(self._held):
            if number <= self.published:
                break
            out.append((number, data))
        out.reverse()
        return out[:limit]

    async def wait_for_more(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()


class StreamJournal:
    """The ingest's listener on its hub (``Hub(listener=...)``): each publish cuts the
    aggregator's journal into one batch of the outbox."""

    def __init__(self, agg: JournalingAggregator, outbox: Outbox) -> None:
        self._agg = agg
        self.outbox = outbox

    def published(self, seq: int, now_ms: int) -> None:
        self.outbox.cut(now_ms, seq, self._agg.take_journal())

    def rebased(self) -> None:
        # What happened before is in the snapshot; the stream starts here.
        self._agg.take_journal()


@attrs.define
class PublisherStats:
    connected: bool = False
    snapshots: int = 0
    snapshot_bytes: int = 0
    snapshot_s: float = 0.0  # how long the latest one took to take (in a forked child)
    snapshot_pause_s: float = 0.0  # how long the loop stopped for it (the fork)
    snapshot_failures: int = 0  # children that died before handing over their bytes
    # The resume-horizon period each older-snapshot slot was last written in (Redis may restart).
    slot_periods: list[int] = attrs.Factory(lambda: [-1, -1])


async def serve_publisher(
    settings: ScaleoutConfig,
    runtime: Node,
    outbox: Outbox,
    stats: PublisherStats,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ingest: the batches ``runtime``'s hub cuts into ``outbox`` (its :class:`StreamJournal`)
    and snapshots into Redis, forever; through Redis outages."""
    backoff = _Backoff()
    stamp: int | None = None
    failures = 0
    task_status.started()
    while True:
        try:
            async with open_redis(settings) as redis:
                if stamp is None:
                    stamp = await _choose_stamp(redis, settings, runtime.wall_ms())
                top = await _stream_top(redis, settings)
                # A restarted Redis lost the stream: publish again all that is held.
                outbox.published = top.batch if top is not None and top.stamp == stamp else 0
                stats.slot_periods = [-1, -1]
                await _write_snapshot(redis, settings, runtime, outbox, stamp, stats)
                stats.connected = True
                runtime.not_ready.discard(NOT_READY_REDIS)
                if failures:
                    log.info("redis is back: publishing %d held batches", outbox.waiting)
                failures = 0
                backoff.reset()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_snapshots_forever, redis, runtime, outbox, stamp, stats, settings)
                    await _publish_forever(redis, outbox, stamp, settings)
        except* REDIS_ERRORS as group:
            failures += 1
            if failures == 1:
                log.warning("redis unreachable (%s): holding batches, retrying", _describe(group))
        stats.connected = False
        runtime.not_ready.add(NOT_READY_REDIS)
        await trio.sleep(backoff.take())


async def _choose_stamp(redis: coredis.Redis[bytes], settings: ScaleoutConfig, now_ms: int) -> int:
    """This ingest's stamp: its start, above any entry already in the stream (ids only grow)."""
    top = await _stream_top(redis, settings)
    return max(now_ms, top.stamp + 1) if top is not None else now_ms


async def _stream_top(redis: coredis.Redis[bytes], settings: ScaleoutConfig) -> Offset | None:
    entries = await redis.xrevrange(settings.stream_key, count=1)
    return Offset.parse(entries[0].identifier) if entries else None


async def _publish_forever(
    redis: coredis.Redis[bytes], outbox: Outbox, stamp: int, settings: ScaleoutConfig
) -> None:
    while True:
        pending = outbox.unpublished(_PUBLISH_CHUNK)
        if not pending:
            await outbox.wait_for_more()
            continue
        async with redis.pipeline(transaction=False, raise_on_error=False) as pipe:
            for number, data in pending:
                pipe.xadd(
                    settings.stream_key,
                    {"b": data},
                    identifier=str(Offset(stamp, number)),
                    trim_strategy=PureToken.MAXLEN,
                    threshold=settings.stream_maxlen,
                    trim_operator=PureToken.APPROXIMATELY,
                )
        for result in pipe.results or ():
            # "equal or smaller than the target stream top": it got there before a connection
            # dropped the reply; anything else is a real failure.
            if isinstance(result, coredis.exceptions.ResponseError) and "equal or smaller" in str(result):
                continue
            if isinstance(result, BaseException):
                raise result
        outbox.published = max(outbox.published, pending[-1][0])


async def _snapshots_forever(
    redis: coredis.Redis[bytes],
    runtime: Node,
    outbox: Outbox,
    stamp: int,
    stats: PublisherStats,
    settings: ScaleoutConfig,
) -> None:
    while True:
        # The loop's share is the fork's pause; the child's pickling is background work (nice 19).
        await trio.sleep(max(settings.snapshot_s, stats.snapshot_pause_s / _MAX_SNAPSHOT_SHARE))
        try:
            await _write_snapshot(redis, settings, runtime, outbox, stamp, stats)
        except ChildDumpError as error:
            # The child died (the OOM killer, a signal to the whole process group): the edges
            # keep the previous snapshot, and the ingest must go on ingesting; try next period.
            stats.snapshot_failures += 1
            log.warning("snapshot not written: %s; trying again in %.0f s", error, settings.snapshot_s)


async def _write_snapshot(
    redis: coredis.Redis[bytes],
    settings: ScaleoutConfig,
    runtime: Node,
    outbox: Outbox,
    stamp: int,
    stats: PublisherStats,
) -> None:
    hub = runtime.hub
    fields: dict[str, str | bytes] = {
        "v": str(FORMAT_VERSION),
        "epoch": hub.epoch,
        "seq": str(hub.seq),
        "offset": str(Offset(stamp, outbox.last)),
        "taken_ms": str(runtime.wall_ms()),
    }
    # No checkpoint between reading seq and offset above and the fork: they and the state are of
    # one moment. Pickling in the loop stopped it ~0.26 s for a busy window; the child does not.
    dumped = await dump_in_child(partial(dump_state, runtime.agg))
    state = fields["state"] = dumped.data
    stats.snapshot_s = dumped.took_s
    stats.snapshot_pause_s = dumped.pause_s
    await redis.hset(settings.snapshot_key, fields)
    period = runtime.wall_ms() // round(settings.resume_horizon_s * 1000)
    slot = period % 2
    if stats.slot_periods[slot] != period:
        await redis.hset(settings.older_snapshot_key(slot), fields)
        stats.slot_periods[slot] = period
    stats.snapshots += 1
    stats.snapshot_bytes = len(state)


# -- edge ----------------------------------------------------------------------------------------


@attrs.frozen
class Snapshot:
    epoch: str
    seq: int
    offset: Offset
    state: bytes


def parse_snapshot(fields: dict[bytes, bytes]) -> Snapshot:
    try:
        version = int(fields[b"v"])
        if version != FORMAT_VERSION:
            raise StreamFormatError(f"snapshot format {version}, this version reads {FORMAT_VERSION}")
        return Snapshot(
            epoch=fields[b"epoch"].decode(),
            seq=int(fields[b"seq"]),
            offset=Offset.parse(fields[b"offset"]),
            state=fields[b"state"],
        )
    except (KeyError, ValueError) as exc:
        raise StreamFormatError(f"snapshot without a readable {exc}") from None


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _reaches(snapshot: Offset, needed: Offset | None) -> bool:
    """Whether reading on from ``snapshot`` gets entry ``needed`` (None: any snapshot will do)."""
    if needed is None:
        return True
    return snapshot.stamp > needed.stamp or (
        snapshot.stamp == needed.stamp and snapshot.batch >= needed.batch - 1
    )


class Follower:
    """Edge: keeps the runtime's aggregator and hub a replica of the ingest's."""

    def __init__(self, settings: ScaleoutConfig, runtime: Node) -> None:
        self.settings = settings
        self.runtime = runtime
        # The stream entry the replica's state is after; None until a snapshot is loaded.
        self.offset: Offset | None = None
        self.connected = False
        self.snapshot_loads = 0
        self.batches = 0
        # now_ms of the latest batch applied (the ingest's clock): the replica's age.
        self.last_batch_ms = 0
        self._current = False
        self._on_current: Callable[[], None] | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever; reports started once it has loaded a snapshot and read the stream to its end."""
        self._on_current = task_status.started
        backoff = _Backoff()
        failures = 0
        while True:
            try:
                async with open_redis(self.settings) as redis:
                    self.connected = True
                    self.runtime.not_ready.discard(NOT_READY_REDIS)
                    if failures:
                        log.info("redis is back: reading on from %s", self.offset)
                    failures = 0
                    backoff.reset()
                    await self._follow(redis)
            except* REDIS_ERRORS as group:
                failures += 1
                if failures == 1:
                    log.warning("redis unreachable (%s): serving the last state, retrying", _describe(group))
            self.connected = False
            self.runtime.not_ready.add(NOT_READY_REDIS)
            await trio.sleep(backoff.take())

    async def _follow(self, redis: coredis.Redis[bytes]) -> None:
        needed: Offset | None = None
        while True:
            if self.offset is None:
                await self._load_snapshot(redis, needed)
                needed = None
            assert self.offset is not None
            reply = await redis.xread(
                {self.settings.stream_key: str(self.offset)},
                count=_READ_COUNT,
                block=_BLOCK_MS if self._current else None,
            )
            entries = reply.get(self.settings.stream_key.encode(), ()) if reply else ()
            for entry in entries:
                offset = Offset.parse(entry.identifier)
                if not offset.follows(self.offset):
                    log.warning("stream goes on at %s after %s: reloading the snapshot", offset, self.offset)
                    needed, self.offset = offset, None
                    break
                try:
                    batch = decode_batch(_as_bytes(entry.field_values[b"b"]))
                except (StreamFormatError, KeyError) as exc:
                    log.error("unreadable stream entry %s (%s): reloading the snapshot", offset, exc)
                    needed, self.offset = offset, None
                    break
                self._apply(batch)
                if self.runtime.hub.seq != batch.seq:
                    log.error(
                        "replica at seq %d, the ingest at %d: reloading", self.runtime.hub.seq, batch.seq
                    )
                    needed, self.offset = offset, None
                    break
                self.offset = offset
            if self.offset is not None and len(entries) < _READ_COUNT and not self._current:
                self._current = True
                if self._on_current is not None:
                    self._on_current()
                    self._on_current = None

    async def _oldest_usable(self, redis: coredis.Redis[bytes], latest: Snapshot) -> Snapshot:
        """The oldest snapshot of the latest's ingest that the stream still goes on from."""
        entries = await redis.xrange(self.settings.stream_key, count=1)
        if not entries:
            return latest
        first = Offset.parse(entries[0].identifier)
        best = latest
        for slot in (0, 1):
            fields = await redis.hgetall(self.settings.older_snapshot_key(slot))
            if not fields:
                continue
            try:
                older = parse_snapshot(fields)
            except StreamFormatError:
                continue
            usable = older.offset.stamp == first.stamp and older.offset.batch >= first.batch - 1
            if usable and older.epoch == latest.epoch and older.offset < best.offset:
                best = older
        return best

    def _apply(self, batch: Batch) -> None:
        agg: Aggregator = self.runtime.agg
        self.runtime.hub.publish(apply(agg, batch), batch.now_ms)
        self.batches += 1
        self.last_batch_ms = batch.now_ms

    async def _load_snapshot(self, redis: coredis.Redis[bytes], needed: Offset | None) -> None:
        runtime = self.runtime
        while True:
            fields = await redis.hgetall(self.settings.snapshot_key)
            if fields:
                snapshot = parse_snapshot(fields)
                if _reaches(snapshot.offset, needed):
                    break
            runtime.not_ready.add(NOT_READY_SNAPSHOT)
            await trio.sleep(_SNAPSHOT_POLL_S)
        if self.snapshot_loads == 0:
            snapshot = await self._oldest_usable(redis, snapshot)
        load_state(runtime.agg, snapshot.state)
        runtime.hub.restart(epoch=snapshot.epoch, seq=snapshot.seq, now_ms=runtime.wall_ms())
        self.offset = snapshot.offset
        self.snapshot_loads += 1
        self._current = False
        runtime.not_ready.discard(NOT_READY_SNAPSHOT)
        log.info(
            "loaded the snapshot at %s (epoch %s, seq %d)", snapshot.offset, snapshot.epoch, snapshot.seq
        )

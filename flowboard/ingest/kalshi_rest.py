"""A small rate-limited client for Kalshi's public REST API (Kalshi's documented ``/trade-api/v2``).

Shared by backfill/reconciliation and the metadata fetcher; each owner opens its own
client so that each has its own request budget. Requests are signed when a key is
configured. A 429 (which carries no Retry-After) is retried forever with capped,
jittered exponential backoff; other failures are retried a few times and then raised
as :class:`RestUnavailable` so the caller can decide (backfill tries again later).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import orjson
import trio

from flowboard.errors import RestUnavailable
from flowboard.ingest.kalshi_auth import SigningKey

log = logging.getLogger(__name__)


@attrs.define
class TokenBucket:
    """Request budget: ``rate`` tokens per second, at most ``burst`` saved up.

    Pure: the caller passes the time and sleeps for the returned delay. Reserving a
    token that is not there yet drives the level negative, so concurrent callers queue
    in order instead of all waking at once.
    """

    rate: float
    burst: float
    _level: float = attrs.field(init=False)
    _updated: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {self.rate}, {self.burst}")
        self._level = self.burst

    def reserve(self, now: float) -> float:
        """Take one token; return how many seconds to wait before using it."""
        if self._updated is not None:
            self._level = min(self.burst, self._level + (now - self._updated) * self.rate)
        self._updated = now
        self._level -= 1
        return 0.0 if self._level >= 0 else -self._level / self.rate


def backoff_delay(attempt: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with "equal jitter": between half and all of the step."""
    step = min(max_s, initial_s * 2.0 ** min(attempt, 32))
    return step / 2 + rng.random() * step / 2


@attrs.frozen
class RestStatistics:
    requests: int
    rate_limited: int  # 429 answers
    failures: int  # other errors (status >= 500, transport errors)


class RestClient:
    """GET JSON from one Kalshi REST base URL within a request budget."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_path: str,
        *,
        signing_key: SigningKey | None,
        wall_ms: Callable[[], int],
        bucket: TokenBucket,
        rng: random.Random,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_attempts: int = 5,
    ) -> None:
        self._client = client
        self._base_path = base_path.rstrip("/")  # signed paths are absolute: /trade-api/v2/...
        self._signing_key = signing_key
        self._wall_ms = wall_ms
        self._bucket = bucket
        self._rng = rng
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._max_attempts = max_attempts  # for failures other than 429
        self._requests = 0
        self._rate_limited = 0
        self._failures = 0

    def statistics(self) -> RestStatistics:
        return RestStatistics(self._requests, self._rate_limited, self._failures)

    async def get_json(self, path: str, params: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        """``GET base + path`` and return the JSON object; 404 and other 4xx raise at once."""
        failures = 0
        rate_limited = 0
        while True:
            await trio.sleep(self._bucket.reserve(trio.current_time()))
            headers = {}
            if self._signing_key is not None:
                headers = self._signing_key.headers("GET", self._base_path + path, self._wall_ms())
            self._requests += 1
            try:
                response = await self._client.get(path, params=params, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 429:
                    self._rate_limited += 1
                    await trio.sleep(self._delay(rate_limited))
                    rate_limited += 1
                    continue
                if response.status_code < 400:
                    try:
                        # orjson, not response.json(): the stdlib parser recurses once per level,
                        # so a deeply nested answer raised RecursionError out of the ingest.
                        body = orjson.loads(response.content)
                    except orjson.JSONDecodeError:
                        body = None
                    if isinstance(body, dict):
                        return body
                    problem = f"expected a JSON object, got {response.text[:80]!r}"
                elif response.status_code < 500:
                    raise RestUnavailable(
                        f"GET {self._base_path}{path}: HTTP {response.status_code} {response.text[:200]!r}",
                        status=response.status_code,
                    )
                else:
                    problem = f"HTTP {response.status_code}"
            self._failures += 1
            failures += 1
            if failures >= self._max_attempts:
                raise RestUnavailable(f"GET {self._base_path}{path} failed {failures} times; last: {problem}")
            log.warning("Kalshi REST GET %s failed (%s); retrying", path, problem)
            await trio.sleep(self._delay(failures))

    def _delay(self, attempt: int) -> float:
        return backoff_delay(
            attempt, initial_s=self._backoff_initial_s, max_s=self._backoff_max_s, rng=self._rng
        )


@asynccontextmanager
async def open_rest_client(
    base_url: str,
    *,
    signing_key: SigningKey | None,
    wall_ms: Callable[[], int],
    rate_per_s: float,
    burst: float | None = None,
    rng: random.Random | None = None,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[RestClient]:
    """A :class:`RestClient` for ``base_url`` (e.g. ``https://.../trade-api/v2``), closed on exit."""
    bucket = TokenBucket(rate_per_s, burst if burst is not None else max(1.0, rate_per_s))
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport
    ) as client:
        yield RestClient(
            client,
            urlsplit(base_url).path,
            signing_key=signing_key,
            wall_ms=wall_ms,
            bucket=bucket,
            rng=rng if rng is not None else random.Random(),
        )

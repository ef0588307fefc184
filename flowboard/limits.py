"""Pure limiters, with time passed in: how many commands a client may send, how many log lines
bad input may cause, how many connections one address may hold.

Nothing here reads a clock, sleeps or imports trio: the callers pass ``now_s`` (any monotonic
seconds), so the tests drive these with plain numbers.
"""

from __future__ import annotations

from collections import Counter

import attrs


@attrs.define
class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s``; each admitted event takes one.

    A bucket starts full, so a burst of ``burst`` events passes at once and after that events
    pass at ``rate_per_s`` on average.
    """

    rate_per_s: float = attrs.field(validator=attrs.validators.gt(0))
    burst: float = attrs.field(validator=attrs.validators.ge(1))
    _tokens: float = attrs.field(init=False)
    _updated_s: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._tokens = self.burst

    def take(self, now_s: float, cost: float = 1) -> bool:
        """Admit an event costing ``cost`` tokens at ``now_s`` (True), or refuse it (False,
        nothing taken). A clock that goes back refills nothing."""
        if self._updated_s is not None and now_s > self._updated_s:
            self._tokens = min(self.burst, self._tokens + (now_s - self._updated_s) * self.rate_per_s)
        if self._updated_s is None or now_s > self._updated_s:
            self._updated_s = now_s
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class ConnectionCounter:
    """Open connections, in all and per address, against their limits (0: no limit)."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._per_address: Counter[str] = Counter()

    def refusal(self, address: str) -> str | None:
        """Why one more connection from ``address`` must be refused, or None to admit it."""
        if self.max_total and self.total >= self.max_total:
            return f"the server is at its limit of {self.max_total} connections; try again later"
        if self.max_per_address and self._per_address[address] >= self.max_per_address:
            return f"too many connections from your address (limit {self.max_per_address})"
        return None

    def opened(self, address: str) -> None:
        self.total += 1
        self._per_address[address] += 1

    def closed(self, address: str) -> None:
        self.total -= 1
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]

    def count(self, address: str) -> int:
        return self._per_address[address]


def backoff_s(failures_in_a_row: int, first_s: float, max_s: float) -> float:
    """Exponential backoff: ``first_s`` after the first failure, doubling up to ``max_s``."""
    return min(max_s, first_s * 2.0 ** max(0, failures_in_a_row - 1))

"""Graceful overload: when the event loop falls behind, send less often instead of collapsing.

While the loop keeps up, ``Hub.publish`` sends frames at once (a caught-up client gets each
trade in a frame of its own). When it does not (a periodic timer wakes late, or publishing
takes most of the time between batches), the hub only offers events to sessions, and frames go
out on a coalescing tick: each client then gets the trades of a whole tick batched in one frame
and its keyed state conflated, so the CPU per trade falls as the load rises. The tick lengthens
while the loop stays behind and shortens (to "at once") when it has recovered.
"""

from __future__ import annotations

import attrs


@attrs.define
class Coalescer:
    """The pure decision: how long frames wait for the next send, from what the loop shows."""

    min_interval_s: float = 0.02
    # Within the 250 ms a viewer's p99 may take.
    max_interval_s: float = 0.25
    # Behind: the timer ran this late, or sending took this share of the time. (A timer a few
    # ms late is a busy shared machine, not our overload: no reason to batch.)
    behind_lag_s: float = 0.05
    behind_busy_share: float = 0.5
    # Recovered: below both of these.
    recovered_lag_s: float = 0.02
    recovered_busy_share: float = 0.25
    # The busy share is a mean over about this long (exponentially weighted): one long pass
    # in a short period (a publish to thousands of clients) is not overload; a loop busy for
    # most of a second is.
    busy_horizon_s: float = 1.0
    # That mean, as of the last period observed.
    busy_share: float = 0.0
    # Seconds between sends; 0 means each publish sends at once.
    interval_s: float = 0.0

    def observe(
        self, *, lag_s: float, busy_share: float, own_pass_s: float = 0.0, period_s: float | None = None
    ) -> float:
        """One timer period's lag and the share of it spent publishing; returns the interval.

        ``period_s``: how long the period lasted; its busy share then weighs in the mean in
        proportion (None: it stands alone, as long as the horizon).

        ``own_pass_s``: the longest single publish in the period. A timer that waited for one of
        our own passes (one write per client: tens of ms with thousands of clients) is late by
        that much without the loop being behind; batching would only add to every viewer's
        latency, so only the lag beyond it counts. A busy share past the bound still does."""
        weight = 1.0 if period_s is None else min(1.0, period_s / self.busy_horizon_s)
        self.busy_share += weight * (busy_share - self.busy_share)
        busy_share = self.busy_share
        lag_s = max(0.0, lag_s - own_pass_s)
        if lag_s > self.behind_lag_s or busy_share > self.behind_busy_share:
            self.interval_s = min(self.max_interval_s, max(self.min_interval_s, self.interval_s * 2))
        elif lag_s < self.recovered_lag_s and busy_share < self.recovered_busy_share and self.interval_s:
            halved = self.interval_s / 2
            self.interval_s = halved if halved >= self.min_interval_s else 0.0
        return self.interval_s

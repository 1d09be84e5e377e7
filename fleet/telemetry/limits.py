"""Per-agent frame caps and process-wide load shedding.

Daphne keeps reading a socket into an unbounded queue however slowly the app drains it (DESIGN §6), so
the app must drain cheaply: a frame over an agent's budget is dropped before it is even parsed, an
agent that keeps flooding is disconnected, and when the event loop falls behind every agent is told
a longer metrics interval (a ``control`` frame) until it recovers.
"""

from __future__ import annotations

import time

from fleet.lib.ratelimit import TokenBucket

FLOOD_CLOSE_DROPS = 200  # frames dropped within FLOOD_WINDOW before the connection is closed
FLOOD_WINDOW = 60.0
METRICS_BURST = 5
MAX_SHED_LEVEL = 5  # interval x 32 at most
SHED_UP_TICKS = 2  # consecutive lagging flusher ticks before shedding more
SHED_DOWN_AFTER = 30.0  # seconds without lag before shedding less
SHED_HOLD = 10.0  # seconds between two increases


class FrameGate:
    """Token bucket for all frames of one connection, plus a floor on the metrics spacing."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        now = time.monotonic()
        self.frames = TokenBucket(rate, burst if burst is not None else max(2 * rate, 10), now=now)
        self.metrics = TokenBucket(0.0, METRICS_BURST, now=now)
        self.drops: list[float] = []

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.frames.allow(now):
            return True
        self.drop(now)
        return False

    def metrics_allowed(self, interval: float, now: float | None = None) -> bool:
        """Metrics at up to twice the assigned rate, with a small burst (frames bunched by a stall)."""
        now = time.monotonic() if now is None else now
        self.metrics.rate = 2 / interval
        if self.metrics.allow(now):
            return True
        self.drop(now)
        return False

    def drop(self, now: float) -> None:
        self.drops = [t for t in self.drops if now - t < FLOOD_WINDOW][-FLOOD_CLOSE_DROPS:] + [now]

    @property
    def flooding(self) -> bool:
        return len(self.drops) > FLOOD_CLOSE_DROPS


class Shedder:
    """Watches the flusher's timer lag; raises or lowers the metrics interval multiplier (2**level)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.level = 0
        self.lagging = 0
        self.changed = 0.0
        self.calm_since = time.monotonic()

    def observe(self, lag: float, now: float | None = None) -> bool:
        """Record one tick's lag; True when the level changed."""
        now = time.monotonic() if now is None else now
        if lag > self.threshold:
            self.lagging += 1
            self.calm_since = now
            if self.lagging >= SHED_UP_TICKS and self.level < MAX_SHED_LEVEL and now - self.changed >= SHED_HOLD:
                self.level += 1
                self.changed, self.lagging = now, 0
                return True
            return False
        self.lagging = 0
        if lag < self.threshold / 4 and self.level and now - self.calm_since >= SHED_DOWN_AFTER:
            self.level -= 1
            self.changed = self.calm_since = now
            return True
        return False

    def interval(self, base: float) -> float:
        return base * (2 ** self.level)

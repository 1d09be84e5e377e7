"""Per-agent frame caps and process-wide load shedding.

Daphne keeps reading a socket into an unbounded queue however slowly the app drains it (DESIGN §6), so
the app must drain cheaply: a frame over an agent's budget is dropped before it is even parsed, an
agent that keeps flooding is disconnected, and when the process falls behind (its event loop lags, or
frames wait in the queues of many connections) every agent is told a longer metrics interval (a
``control`` frame) until it recovers.
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
BACKLOG_FRAMES = 8  # frames waiting behind the one read: that connection's queue is falling behind
# Connections seen falling behind within one flusher tick before the process counts as behind: a share,
# and at least a few, so that one agent flooding its own socket slows nobody else.
BACKLOG_SHARE = 0.02
BACKLOG_MIN_CONNECTIONS = 5


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
    """Watches the flusher's timer lag and the connections whose queues fall behind; raises or lowers the
    metrics interval multiplier (2**level). The lag alone missed a process offered twice what it can
    take: each turn of its loop stayed short while frames piled up in Daphne's queues (memory grew
    ~30 MB a minute and no agent was told to slow down)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.level = 0
        self.lagging = 0
        self.changed = 0.0
        self.calm_since = time.monotonic()
        self.behind: set[int] = set()  # connections seen with a backlog since the last tick
        self.last_behind = 0  # how many there were at the last tick

    def backlog(self, connection: int, waiting: int) -> None:
        """A connection read a frame with ``waiting`` more queued behind it (per frame: keep it cheap)."""
        if waiting > BACKLOG_FRAMES:
            self.behind.add(connection)

    def observe(self, lag: float, now: float | None = None, connections: int = 0) -> bool:
        """Record one tick's lag and backlogs (``connections``: agent connections open); True when the
        level changed."""
        now = time.monotonic() if now is None else now
        self.last_behind = len(self.behind)
        behind = self.last_behind >= max(BACKLOG_MIN_CONNECTIONS, BACKLOG_SHARE * connections)
        self.behind = set()
        if lag > self.threshold or behind:
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

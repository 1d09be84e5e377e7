"""A token bucket: ``rate`` tokens a second, at most ``burst`` saved up. Not thread-safe; one per owner."""

from __future__ import annotations

import time


class TokenBucket:
    def __init__(self, rate: float, burst: float, *, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def allow(self, now: float | None = None, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are enough; False (nothing taken) otherwise."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def wait_time(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be there (as of the last call)."""
        return max(0.0, (cost - self.tokens) / self.rate) if self.rate > 0 else float("inf")

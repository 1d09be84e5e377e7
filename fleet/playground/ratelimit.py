"""Per-API-key request budget for the gateway: a token bucket per key, in this server process.

With N server processes behind a balancer a key gets up to N times the rate; the bucket is there to
stop one runaway client from starving the fleet, not to meter exactly.
"""

from __future__ import annotations

import time

from django.conf import settings

BURST_SECONDS = 10.0  # a key may spend this many seconds' worth of requests at once
_buckets: dict[int, tuple[float, float]] = {}  # key id → (tokens, stamp)


def take(key_id: int, now: float | None = None) -> float:
    """Spend one request of ``key_id``'s budget: 0 when allowed, else the seconds until one is free."""
    now = time.monotonic() if now is None else now
    rate = settings.FLEET_GATEWAY_REQUESTS_PER_MINUTE / 60
    burst = max(1.0, rate * BURST_SECONDS)
    tokens, stamp = _buckets.get(key_id, (burst, now))
    tokens = min(burst, tokens + (now - stamp) * rate)
    if tokens >= 1:
        _buckets[key_id] = (tokens - 1, now)
        return 0.0
    _buckets[key_id] = (tokens, now)
    return (1 - tokens) / rate

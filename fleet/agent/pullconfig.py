"""Settings of the agent's fast path (fleet.agent.pull), read from the environment, and its node-wide rate cap."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.lib.units import format_bytes, parse_size

MiB = 1024 * 1024


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PullConfig:
    min_size: int = 64 * MiB  # files above this take the fast path; smaller ones go through huggingface_hub
    ranges: int = 8  # parallel Range requests per node
    chunk: int = 32 * MiB  # bytes per range: the unit of resume and of progress
    rate: int = 0  # bytes per second for all of this node's fast-path downloads together; 0: no cap

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PullConfig:
        """FLEET_AGENT_PULL_MIN, FLEET_AGENT_PULL_RANGES, FLEET_AGENT_PULL_CHUNK, FLEET_AGENT_PULL_RATE."""
        environ = os.environ if environ is None else environ

        def size(name: str, default: int, minimum: int) -> int:
            raw = environ.get(name, "").strip()
            try:
                value = parse_size(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name}={raw!r} must be a size such as 64M or 1G") from None
            if value < minimum:
                raise ConfigError(f"{name}={raw!r} must be at least {format_bytes(minimum)}")
            return value

        raw = environ.get("FLEET_AGENT_PULL_RANGES", "").strip()
        try:
            ranges = int(raw) if raw else cls.ranges
            if not 1 <= ranges <= 64:
                raise ValueError
        except ValueError:
            raise ConfigError(f"FLEET_AGENT_PULL_RANGES={raw!r} must be a whole number from 1 to 64") from None
        return cls(min_size=size("FLEET_AGENT_PULL_MIN", cls.min_size, 0),
                   ranges=ranges,
                   chunk=size("FLEET_AGENT_PULL_CHUNK", cls.chunk, 4096),
                   rate=size("FLEET_AGENT_PULL_RATE", cls.rate, 0))


class RateCap:
    """One node-wide cap in bytes per second, shared by every range worker (0: none)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = 0.0

    def take(self, count: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            self.next_free = max(self.next_free, now - 0.1) + count / self.rate  # at most 100 ms of burst
            wait = self.next_free - now
        if wait > 0:
            time.sleep(wait)

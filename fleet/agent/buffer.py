"""What the agent keeps while its socket is down: the newest samples within a time, count and size bound
(oldest dropped first, and counted), sent compactly (``metrics.batch`` frames, processes left out) after the
next welcome; each batch tells the server how many points were dropped since the last one it took.

Bounds: FLEET_AGENT_BUFFER_SECONDS (default 15 minutes: the server's live window; it skips older points),
FLEET_AGENT_BUFFER_BYTES (default 4 MiB of serialized points), FLEET_AGENT_BUFFER_POINTS (default 3600)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping

from fleet.agent.protocol import Metrics, MetricsBatch, MetricsPoint
from fleet.lib.units import parse_size

BUFFER_SECONDS = 900.0
MAX_POINTS = 3600
MAX_BYTES = 4 * 1024 * 1024
BATCH_POINTS = 60  # points per catch-up frame at most
BATCH_BYTES = 256 * 1024  # the server's cap for metrics frames unless its welcome says otherwise
BATCH_ENVELOPE = 160  # bytes of a batch frame around its points (type, v, sent, seq, dropped)


def _size(point: MetricsPoint) -> int:
    return len(point.model_dump_json(exclude_none=True, exclude_defaults=True)) + 1


class MetricsBuffer:
    def __init__(self, seconds: float = BUFFER_SECONDS, max_points: int = MAX_POINTS,
                 max_bytes: int = MAX_BYTES) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.points: deque[MetricsPoint] = deque()
        self.max_points = max_points
        self.sizes: deque[int] = deque()
        self.bytes = 0
        self.dropped = 0  # points that aged out or overflowed, since the agent started
        self.reported = 0  # of those, how many a batch the server took has counted

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MetricsBuffer:
        """The bounds from FLEET_AGENT_BUFFER_SECONDS, _POINTS and _BYTES (bad values: ValueError)."""
        environ = os.environ if environ is None else environ
        seconds = float(environ.get("FLEET_AGENT_BUFFER_SECONDS") or BUFFER_SECONDS)
        points = int(environ.get("FLEET_AGENT_BUFFER_POINTS") or MAX_POINTS)
        size = parse_size(environ.get("FLEET_AGENT_BUFFER_BYTES") or str(MAX_BYTES))
        if not (seconds > 0 and points > 0 and size > 0):
            raise ValueError("FLEET_AGENT_BUFFER_SECONDS, _POINTS and _BYTES must be positive")
        return cls(seconds=seconds, max_points=points, max_bytes=size)

    def __len__(self) -> int:
        return len(self.points)

    def add(self, metrics: Metrics) -> None:
        gpus = [gpu.model_copy(update={"processes": []}) if gpu.processes else gpu for gpu in metrics.gpus]
        point = MetricsPoint(ts=metrics.ts, gpus=gpus, host=metrics.host)
        size = _size(point)
        self.points.append(point)
        self.sizes.append(size)
        self.bytes += size
        while len(self.points) > self.max_points or (self.bytes > self.max_bytes and len(self.points) > 1):
            self._drop_oldest()
        self._expire(metrics.ts)

    def _drop_oldest(self) -> None:
        self.points.popleft()
        self.bytes -= self.sizes.popleft()
        self.dropped += 1

    def _expire(self, now: float) -> None:
        while self.points and self.points[0].ts < now - self.seconds:
            self._drop_oldest()

    def next_batch(self, size: int = BATCH_POINTS, max_bytes: int = BATCH_BYTES, seq: int = 0) -> MetricsBatch | None:
        """The oldest points that fit in one frame of at most ``max_bytes`` serialized (not removed:
        call ``accepted`` once the server acknowledged it). A point too large for any frame is dropped."""
        self._expire(time.time())
        points: list[MetricsPoint] = []
        used = BATCH_ENVELOPE
        while len(points) < min(size, len(self.points)):
            cost = self.sizes[len(points)]
            if not points and cost + BATCH_ENVELOPE > max_bytes:
                self._drop_oldest()  # alone it is over the cap: the server could never take it
                continue
            if used + cost > max_bytes:
                break
            points.append(self.points[len(points)])
            used += cost
        if not points:
            return None
        return MetricsBatch(type="metrics.batch", sent=time.time(), seq=seq, points=points,
                            dropped=self.dropped - self.reported)

    def accepted(self, batch: MetricsBatch, counted: bool = True) -> None:
        """The server took ``batch`` (or refused it for good: ``counted`` False, its drop count not seen):
        forget its points (those still at the head of the buffer)."""
        taken = {point.ts for point in batch.points}
        while self.points and self.points[0].ts in taken:
            self.points.popleft()
            self.bytes -= self.sizes.popleft()
        if counted:
            self.reported += batch.dropped

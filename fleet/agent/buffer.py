"""What the agent keeps while its socket is down: the last few minutes of samples, sent compactly
(``metrics.batch`` frames, processes left out) after the next welcome."""

from __future__ import annotations

import time
from collections import deque

from fleet.agent.protocol import Metrics, MetricsBatch, MetricsPoint

BUFFER_SECONDS = 300.0  # "the last few minutes"
MAX_POINTS = 600  # also bounded by count, whatever the interval
BATCH_POINTS = 60  # points per catch-up frame at most
BATCH_BYTES = 256 * 1024  # the server's cap for metrics frames unless its welcome says otherwise
BATCH_ENVELOPE = 128  # bytes of a batch frame around its points (type, v, sent, seq)


class MetricsBuffer:
    def __init__(self, seconds: float = BUFFER_SECONDS, max_points: int = MAX_POINTS) -> None:
        self.seconds = seconds
        self.points: deque[MetricsPoint] = deque(maxlen=max_points)
        self.dropped = 0  # points that aged out or overflowed before a reconnect

    def __len__(self) -> int:
        return len(self.points)

    def add(self, metrics: Metrics) -> None:
        gpus = [gpu.model_copy(update={"processes": []}) if gpu.processes else gpu for gpu in metrics.gpus]
        if len(self.points) == self.points.maxlen:
            self.dropped += 1
        self.points.append(MetricsPoint(ts=metrics.ts, gpus=gpus, host=metrics.host))
        self._expire(metrics.ts)

    def _expire(self, now: float) -> None:
        while self.points and self.points[0].ts < now - self.seconds:
            self.points.popleft()
            self.dropped += 1

    def next_batch(self, size: int = BATCH_POINTS, max_bytes: int = BATCH_BYTES, seq: int = 0) -> MetricsBatch | None:
        """The oldest points that fit in one frame of at most ``max_bytes`` serialized (not removed:
        call ``accepted`` once the server acknowledged it). A point too large for any frame is dropped."""
        self._expire(time.time())
        points: list[MetricsPoint] = []
        used = BATCH_ENVELOPE
        while len(points) < min(size, len(self.points)):
            point = self.points[len(points)]
            cost = len(point.model_dump_json(exclude_none=True, exclude_defaults=True)) + 1
            if not points and cost + BATCH_ENVELOPE > max_bytes:
                self.points.popleft()  # alone it is over the cap: the server could never take it
                self.dropped += 1
                continue
            if used + cost > max_bytes:
                break
            points.append(point)
            used += cost
        if not points:
            return None
        return MetricsBatch(type="metrics.batch", sent=time.time(), seq=seq, points=points)

    def accepted(self, batch: MetricsBatch) -> None:
        """The server took ``batch``: forget its points (those still at the head of the buffer)."""
        taken = {point.ts for point in batch.points}
        while self.points and self.points[0].ts in taken:
            self.points.popleft()

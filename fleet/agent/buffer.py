"""What the agent keeps while its socket is down: the last few minutes of samples, sent compactly
(``metrics.batch`` frames, processes left out) after the next welcome."""

from __future__ import annotations

import time
from collections import deque

from fleet.agent.protocol import Metrics, MetricsBatch, MetricsPoint

BUFFER_SECONDS = 300.0  # "the last few minutes"
MAX_POINTS = 600  # also bounded by count, whatever the interval
BATCH_POINTS = 60  # points per catch-up frame: 8 GPUs x 60 stays far under the 1 MiB frame limit


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

    def next_batch(self, size: int = BATCH_POINTS) -> MetricsBatch | None:
        """The oldest ``size`` points as one frame (not removed: call ``sent`` once it went out)."""
        self._expire(time.time())
        if not self.points:
            return None
        points = [self.points[i] for i in range(min(size, len(self.points)))]
        return MetricsBatch(type="metrics.batch", sent=time.time(), points=points)

    def sent(self, batch: MetricsBatch) -> None:
        for _ in range(min(len(batch.points), len(self.points))):
            self.points.popleft()

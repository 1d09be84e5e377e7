"""The production store (Redis) hands a poller every point newer than what it has: a burst of points
(a catch-up batch, a slow poller) is never cut to the last few."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fleet.agent.protocol import Metrics
from fleet.telemetry.live import LiveTelemetry
from tests.telemetry.conftest import gpu, metrics_frame


def test_points_since_returns_every_newer_point(services) -> None:
    from fleet.telemetry.store import RedisStore

    store = RedisStore(services["redis"], f"test-{uuid.uuid4().hex[:8]}")
    telemetry = LiveTelemetry()
    telemetry.shared = True  # as get_store() marks a process that feeds Redis: unflushed points are kept
    start = float(int(time.time()) - 200)  # whole seconds: points keep their time to the millisecond
    for i in range(150):
        frame = Metrics.model_validate(metrics_frame(start + i, [gpu(0, utilization_gpu=float(i % 100))]))
        telemetry.ingest(7, frame, now=start + i)

    async def scenario() -> list[list]:
        await store.push(telemetry)
        try:
            return [json.loads(await store.points(7, since)) for since in (0.0, start + 0.5, start + 139.5)]
        finally:
            await store.aio.aclose()

    try:
        everything, after_first, last_ten = asyncio.run(scenario())
    finally:
        store.sync.delete(*store.sync.keys(store.prefix + ":*"))
    assert len(everything) == 150
    assert len(after_first) == 149 and after_first[0][0] == start + 1
    assert len(last_ten) == 10 and last_ten[-1][0] == start + 149

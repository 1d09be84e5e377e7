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
            one_by_one = [await store.points(7, since) for since in (0.0, start + 0.5, start + 139.5, start + 149)]
            # the poller's read: many nodes in one round trip, the same text whatever the since
            for since, text in zip((0.0, start + 0.5, start + 139.5, start + 149), one_by_one, strict=True):
                assert await store.points_many({7: since, 8: since}) == {7: text, 8: "[]"}
            return [json.loads(text) for text in one_by_one[:3]]
        finally:
            await store.aio.aclose()

    try:
        everything, after_first, last_ten = asyncio.run(scenario())
    finally:
        store.sync.delete(*store.sync.keys(store.prefix + ":*"))
    assert len(everything) == 150
    assert len(after_first) == 149 and after_first[0][0] == start + 1
    assert len(last_ten) == 10 and last_ten[-1][0] == start + 149


def test_a_flush_after_redis_lost_its_scripts_still_lands_every_point(services) -> None:
    """Windows are appended by a Lua script (one reply per flush); Redis forgets scripts when it restarts,
    and the next flush loads it again instead of failing. Many nodes and points in one flush all land,
    each in its own node's window."""
    from fleet.telemetry.store import RedisStore

    store = RedisStore(services["redis"], f"test-{uuid.uuid4().hex[:8]}")
    telemetry = LiveTelemetry()
    telemetry.shared = True
    start = float(int(time.time()) - 100)

    def feed(first: int, last: int) -> None:
        for i in range(first, last):
            for node_id in range(1, 41):
                frame = Metrics.model_validate(metrics_frame(start + i, [gpu(0, utilization_gpu=float(node_id))]))
                telemetry.ingest(node_id, frame, now=start + i)

    async def scenario() -> dict[int, list]:
        feed(0, 30)
        await store.push(telemetry)
        await store.aio.script_flush()  # as after a restart of Redis
        feed(30, 60)
        await store.push(telemetry)
        try:
            return {node_id: json.loads(await store.points(node_id)) for node_id in range(1, 41)}
        finally:
            await store.aio.aclose()

    try:
        windows = asyncio.run(scenario())
    finally:
        store.sync.delete(*store.sync.keys(store.prefix + ":*"))
    for node_id, points in windows.items():
        assert [p[0] for p in points] == [start + i for i in range(60)], node_id
        assert {p[1][0][1] for p in points} == {float(node_id)}, node_id

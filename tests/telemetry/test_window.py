"""The compact chart window: ring wrap-around, since-reads, None values, the browsers' JSON, the memory bound."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc

import pytest

from fleet.agent.protocol import Metrics, MetricsBatch
from fleet.telemetry.live import MIB, LiveTelemetry
from fleet.telemetry.window import BUCKET_SECONDS, OLD_POINTS, RECENT_POINTS, WINDOW_SECONDS, Window, points_json
from tests.telemetry.conftest import gpu, metrics_frame

T0 = 1_750_000_000.0


def old_points_json(frames: list[tuple[float, Metrics]]) -> str:
    """The window JSON as the tuple-per-point window wrote it before (the format browsers read)."""
    return json.dumps([(ts, tuple((g.index, g.utilization_gpu, None if g.memory_used_bytes is None
                                   else g.memory_used_bytes // MIB, g.temperature_c, g.power_w, g.sm_clock_mhz)
                                  for g in frame.gpus)) for ts, frame in frames], separators=(",", ":"))


def frame(ts: float, *gpus: dict) -> Metrics:
    return Metrics.model_validate(metrics_frame(ts, list(gpus)))


def row(index: int, util: float | None = 50.0) -> tuple:
    return (index, util, 1024, 60.0, 300.0, 1980)


def test_json_is_the_old_format_for_a_short_series_with_none_and_lost_gpus():
    telemetry = LiveTelemetry()
    frames = []
    for i in range(30):
        frames.append((T0 + i, frame(T0 + i,
                                     gpu(0, utilization_gpu=float(i), power_w=312.456 + i, temperature_c=61.5),
                                     gpu(1, utilization_gpu=None, temperature_c=None, sm_clock_mhz=None,
                                         memory_used_bytes=None, power_w=None),
                                     {"index": 2, "uuid": "GPU-lost", "lost": True},
                                     gpu(3, memory_used_bytes=(79 << 30) + 12345, power_w=0.1, utilization_gpu=33.3))))
    frames.append((T0 + 30, frame(T0 + 30)))  # a frame without GPUs
    frames.append((T0 + 31, frame(T0 + 31, gpu(5, utilization_gpu=7.0))))  # a GPU index seen late
    for ts, metrics in frames:
        telemetry.ingest(1, metrics, now=ts)
    assert telemetry.window_json(1) == old_points_json(frames)
    assert telemetry.window_json(1, since=T0 + 28) == old_points_json(frames[29:])
    assert telemetry.window_json(1, since=T0 + 31) == "[]"
    decoded = json.loads(telemetry.window_json(1))
    assert decoded[0][1][1][1:] == [None] * 5 == decoded[0][1][2][1:]
    assert decoded[1][1][3] == [3, 33.3, 79 * 1024, 60.0, 0.1, 1980] and decoded[1][1][0][4] == 313.456


def test_ring_wraps_around_and_older_points_become_buckets():
    window = Window()
    total = RECENT_POINTS + 100
    for i in range(total):
        window.append(T0 + i, [row(0, float(i % 100)), row(1)])
    points = list(window)
    recent = points[-RECENT_POINTS:]
    assert [p[0] for p in recent] == [T0 + i for i in range(100, total)]  # full resolution, in order
    assert [p[1][0][1] for p in recent] == [float(i % 100) for i in range(100, total)]
    older = points[:-RECENT_POINTS]
    # 100 points fell out of full resolution: averaged per BUCKET_SECONDS slice (the last one still open).
    assert len(older) == pytest.approx(100 / BUCKET_SECONDS, abs=1)
    assert [p[0] for p in older] == sorted(p[0] for p in older) and older[-1][0] < recent[0][0]
    first = [i for i in range(100) if int((T0 + i) // BUCKET_SECONDS) == int(T0 // BUCKET_SECONDS)]
    assert older[0][0] == pytest.approx(T0 + sum(first) / len(first))
    assert older[0][1][0][1] == pytest.approx(sum(first) / len(first))
    assert older[0][1][1] == [1, 50.0, 1024, 60.0, 300.0, 1980]


def test_window_is_bounded_and_keeps_fifteen_minutes():
    window = Window()
    for i in range(3 * WINDOW_SECONDS):
        window.append(T0 + i, [row(g) for g in range(8)])
    points = list(window)
    assert len(points) <= RECENT_POINTS + OLD_POINTS + 1
    assert points[-1][0] - points[0][0] <= WINDOW_SECONDS
    assert points[0][0] >= T0 + 3 * WINDOW_SECONDS - 1 - WINDOW_SECONDS - BUCKET_SECONDS


def test_since_reads_only_the_new_points(monkeypatch):
    window = Window()
    for i in range(RECENT_POINTS * 3):
        window.append(T0 + i, [row(0)])
    newest = T0 + RECENT_POINTS * 3 - 1
    assert [p[0] for p in window.since(newest - 3)] == [newest - 2, newest - 1, newest]
    assert window.since(newest) == []
    reads = 0
    original = Window._point

    def counting(self, ring, at):
        nonlocal reads
        reads += 1
        return original(self, ring, at)

    monkeypatch.setattr(Window, "_point", counting)
    window.since(newest - 3)
    assert reads == 4  # the three new points and the one that stops the walk, not the whole window
    # A poller far behind gets the buckets too, still oldest first.
    behind = window.since(newest - 400)
    assert [p[0] for p in behind] == sorted(p[0] for p in behind) and behind[-1][0] == newest


def test_none_values_survive_and_are_not_averaged_as_zero():
    window = Window()
    for i in range(RECENT_POINTS + 20):
        window.append(T0 + i, [(0, None if i % 2 else 40.0, None, None, 100.0, None)])
    oldest = list(window)[0]
    assert oldest[1][0][1] == 40.0 and oldest[1][0][2] is None and oldest[1][0][3] is None
    assert oldest[1][0][5] is None
    assert json.loads(points_json(window))[-1][1][0][1] is None


def test_a_released_window_keeps_its_last_point_and_a_reconnect_resumes_after_it():
    telemetry = LiveTelemetry()
    assert telemetry.window_json(9) == "[]"
    telemetry.attach(9)
    telemetry.attach(9)  # a replacement connection opens before the old one closes
    for i in range(3):
        telemetry.ingest(9, frame(T0 + i, gpu(0, utilization_gpu=float(i))), now=T0 + i)
    telemetry.detach(9)
    assert len(json.loads(telemetry.window_json(9))) == 3  # the new connection still holds the window
    telemetry.detach(9)
    live = telemetry.nodes[9]
    assert live.window is None and live.latest is not None and json.loads(live.latest_json())["seq"] == 3
    assert json.loads(telemetry.window_json(9)) == [[T0 + 2, [[0, 2.0, 1024, 60.0, 300.0, 1980]]]]
    assert telemetry.window_json(9, since=T0 + 2) == "[]"
    telemetry.attach(9)
    telemetry.ingest(9, frame(T0 + 60, gpu(0, utilization_gpu=9.0)), now=T0 + 60)
    assert [p[0] for p in json.loads(telemetry.window_json(9))] == [T0 + 2, T0 + 60]


def _frames(variants: int = 10) -> list[Metrics]:
    return [frame(T0, *(gpu(g, uuid=f"GPU-{g:08d}", utilization_gpu=float((v * 7 + g) % 100),
                            power_w=300.0 + v + g / 4, temperature_c=55.0 + v % 7) for g in range(8)))
            for v in range(variants)]


def test_memory_per_connected_node_is_bounded_and_released_on_disconnect():
    # 20 minutes at 1 Hz (past the 15-minute window: steady state). tracemalloc makes each frame ~1 ms here, so
    # 20 nodes by default (~35 s); TELEMETRY_MEMORY_NODES=200 runs the fleet-sized version (~4 min).
    nodes, seconds = int(os.environ.get("TELEMETRY_MEMORY_NODES", "20")), 20 * 60
    telemetry = LiveTelemetry()
    variants = _frames()
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for node_id in range(1, nodes + 1):
            telemetry.attach(node_id)
        for second in range(seconds):
            now = T0 + second
            for node_id in range(1, nodes + 1):
                telemetry.ingest(node_id, variants[(second + node_id) % len(variants)], size=3000, now=now)
            if second % 60 == 5:
                telemetry.finish_stale(now)
                telemetry.take()  # the flusher's writer takes rollups and alerts
        gc.collect()
        per_node = (tracemalloc.get_traced_memory()[0] - start) / nodes
        for node_id in range(1, nodes + 1):
            telemetry.detach(node_id)
        telemetry.take()
        gc.collect()
        after = (tracemalloc.get_traced_memory()[0] - start) / nodes
    finally:
        tracemalloc.stop()
    print(f"per connected node: {per_node / 1024:.1f} KiB; after disconnect: {after / 1024:.1f} KiB")
    assert per_node <= 100 * 1024, per_node
    assert after <= 10 * 1024, after  # the latest frame (to say when the node was last heard) and alert state
    assert all(live.window is None and not live.minutes for live in telemetry.nodes.values())


def test_unflushed_points_are_kept_only_for_redis_and_bounded():
    from fleet.telemetry.live import UNFLUSHED_MAX

    embedded = LiveTelemetry()
    embedded.ingest(1, frame(T0, gpu(0)), now=T0)
    assert not embedded.nodes[1].unflushed  # nobody would drain them
    shared = LiveTelemetry()
    shared.shared = True
    for i in range(UNFLUSHED_MAX + 50):
        shared.ingest(1, frame(T0 + i, gpu(0, utilization_gpu=float(i % 100))), now=T0 + i)
    unflushed = shared.nodes[1].unflushed
    assert len(unflushed) == UNFLUSHED_MAX and shared.counters["unflushed_dropped"] == 50
    assert json.loads(unflushed[-1]) == [T0 + UNFLUSHED_MAX + 49, [[0, float((UNFLUSHED_MAX + 49) % 100), 1024, 60.0,
                                                                    300.0, 1980]]]


def test_a_process_feeding_redis_keeps_no_window_of_its_own():
    """In production the window is Redis's (browsers read it there): the process keeps the points not yet
    pushed and the newest point's time, which a catch-up batch is still checked against."""
    shared = LiveTelemetry()
    shared.shared = True
    shared.attach(1)
    for i in range(300):
        shared.ingest(1, frame(T0 + i, gpu(0)), now=T0 + i)
    live = shared.nodes[1]
    assert live.window is None and live.newest == T0 + 299 and len(live.unflushed) == 300
    live.unflushed.clear()  # pushed
    batch = MetricsBatch.model_validate({"type": "metrics.batch", "seq": 1, "sent": T0 + 300,
                                         "points": [{"ts": T0 + 298, "gpus": [gpu(0)]},
                                                    {"ts": T0 + 300, "gpus": [gpu(0)]}]})
    shared.ingest_batch(1, batch, now=T0 + 300)
    assert [json.loads(point)[0] for point in live.unflushed] == [T0 + 300]  # the point already held is skipped


def test_a_process_feeding_redis_forgets_a_departed_node_once_its_points_are_pushed():
    """Redis holds a departed node's latest frame and window: the process drops its state after the push
    that copies the last points (not before: they would be lost), and not when the agent came back."""
    shared = LiveTelemetry()
    shared.shared = True
    for node_id in (1, 2):
        shared.attach(node_id)
        shared.ingest(node_id, frame(T0, gpu(0)), now=T0)
    shared.detach(1)
    shared.detach(2)
    shared.attach(2)  # reconnected before the flusher's next push
    assert shared.drop_released() == 0 and set(shared.nodes) == {1, 2}  # node 1's point is not pushed yet
    for live in shared.nodes.values():
        live.unflushed.clear()  # pushed
    assert shared.drop_released() == 1 and set(shared.nodes) == {2}
    rollups, _ = shared.take()
    assert sorted(row["node_id"] for row in rollups) == [1, 2]  # running minutes finished at each last detach
    assert shared.released == set() and shared.drop_released() == 0
    shared.detach(2)
    shared.nodes[2].unflushed.clear()
    assert shared.drop_released() == 1 and shared.nodes == {}

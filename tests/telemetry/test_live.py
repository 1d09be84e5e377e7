"""The in-memory telemetry: rollups for a known series, energy deltas, alerts derived from samples, catch-up."""

from __future__ import annotations

import pytest

from fleet.agent.protocol import Metrics, MetricsBatch
from fleet.telemetry.live import WINDOW_SECONDS, LiveTelemetry
from tests.telemetry.conftest import gpu, metrics_frame

T0 = 1_750_000_020.0  # 20 s into a minute (1_750_000_020 // 60 * 60 = 1_749_999_960 + 60)
MINUTE = (int(T0) // 60) * 60


def frame(ts: float, *gpus: dict) -> Metrics:
    return Metrics.model_validate(metrics_frame(ts, list(gpus)))


def test_rollup_of_a_known_series():
    telemetry = LiveTelemetry()
    start = MINUTE + 0.5
    # 60 samples in one minute: util 0..59, memory 1..60 GiB, temperature 40/80 alternating, power 100..159
    for i in range(60):
        telemetry.ingest(1, frame(start + i, gpu(0, utilization_gpu=float(i), memory_used_bytes=(i + 1) << 30,
                                           temperature_c=40.0 if i % 2 else 80.0, power_w=100.0 + i,
                                           energy_j=5000.0 + 10 * i)), now=start + i)
    assert telemetry.rollups == []  # the minute is still running
    telemetry.ingest(1, frame(start + 60, gpu(0, energy_j=5600.0)), now=start + 60)  # first sample of the next
    [row] = telemetry.rollups
    assert row["minute"] == MINUTE and row["samples"] == 60 and row["gpu_uuid"] == "GPU-00000000"
    assert (row["util_min"], row["util_avg"], row["util_max"]) == (0.0, 29.5, 59.0)
    assert (row["mem_used_min"], row["mem_used_max"]) == (1 << 30, 60 << 30)
    assert row["mem_used_avg"] == int(30.5 * (1 << 30))
    assert (row["temp_min"], row["temp_avg"], row["temp_max"]) == (40.0, 60.0, 80.0)
    assert (row["power_min"], row["power_avg"], row["power_max"]) == (100.0, 129.5, 159.0)
    assert row["energy_j"] == pytest.approx(590.0)  # 5590 - 5000 within the first minute

    # The next minute's energy counts from the previous minute's last reading: no joule is lost.
    telemetry.ingest(1, frame(start + 119, gpu(0, energy_j=6190.0)), now=start + 119)
    telemetry.finish_stale(start + 200)
    assert telemetry.rollups[1]["energy_j"] == pytest.approx(6190.0 - 5590.0)
    assert telemetry.rollups[1]["samples"] == 2


def test_null_fields_and_lost_gpus_do_not_break_rollups():
    telemetry = LiveTelemetry()
    telemetry.ingest(1, frame(MINUTE + 1, gpu(0, temperature_c=None, power_w=None, energy_j=None),
                        {"index": 1, "uuid": "GPU-lost", "lost": True}), now=MINUTE + 1)
    telemetry.finish_stale(MINUTE + 70)
    [row] = telemetry.rollups
    assert row["temp_avg"] is None and row["power_max"] is None and row["energy_j"] is None
    assert row["util_avg"] == 50.0


def test_window_keeps_fifteen_minutes():
    telemetry = LiveTelemetry()
    for i in range(0, 1200, 10):
        telemetry.ingest(1, frame(T0 + i, gpu(0)), now=T0 + i)
    points = list(telemetry.nodes[1].window)
    assert points[-1][0] - points[0][0] <= WINDOW_SECONDS
    assert points[0][0] >= T0 + 1190 - WINDOW_SECONDS


def test_alerts_derived_from_samples():
    telemetry = LiveTelemetry()
    telemetry.temp_threshold = 85.0
    telemetry.ingest(1, frame(T0, gpu(0, xids=[13, 79]), gpu(1, ecc_uncorrected=0), gpu(2, temperature_c=90.0),
                        {"index": 3, "uuid": "GPU-00000003", "lost": True}), now=T0)
    kinds = sorted((a["kind"], a["gpu_index"], a["code"]) for a in telemetry.alerts)
    assert kinds == [("gpu_lost", 3, None), ("overheat", 2, None), ("xid", 0, 79)]  # XID 13 is an app XID
    telemetry.alerts.clear()
    # Same conditions again: nothing new (lost once, still hot, same XID within a minute).
    telemetry.ingest(1, frame(T0 + 1, gpu(0, xids=[79]), gpu(1, ecc_uncorrected=2), gpu(2, temperature_c=88.0),
                        {"index": 3, "uuid": "GPU-00000003", "lost": True}), now=T0 + 1)
    assert [(a["kind"], a["gpu_index"]) for a in telemetry.alerts] == [("ecc_uncorrected", 1)]
    telemetry.alerts.clear()
    telemetry.ingest(1, frame(T0 + 2, gpu(2, temperature_c=70.0)), now=T0 + 2)  # cooled down: resolves
    assert [(a["kind"], a["resolve"]) for a in telemetry.alerts] == [("overheat", True)]


def test_catch_up_batch_lands_in_order_on_the_server_clock():
    telemetry = LiveTelemetry()
    now = T0 + 100
    telemetry.ingest(1, frame(T0, gpu(0)), now=T0)
    # The agent's clock runs 1000 s behind: its points map onto the server's timeline by `sent`.
    batch = MetricsBatch.model_validate({"type": "metrics.batch", "sent": now - 1000, "points": [
        {"ts": now - 1000 - 30 + i, "gpus": [gpu(0, utilization_gpu=float(i))]} for i in range(30)
    ]})
    telemetry.ingest_batch(1, batch, now=now)
    times = [ts for ts, _ in telemetry.nodes[1].window]
    assert times == sorted(times) and len(times) == 31
    assert times[1] == pytest.approx(now - 30)
    assert telemetry.counters["points"] == 30


def test_reset_forgets_everything():
    telemetry = LiveTelemetry()
    telemetry.temp_threshold = 10.0
    telemetry.ingest(1, frame(T0, gpu(0, temperature_c=90.0)), size=100, now=T0)
    telemetry.connections = 2
    assert telemetry.nodes and telemetry.alerts and telemetry.seq and telemetry.counters["frames"]
    telemetry.reset()
    assert vars(telemetry) == vars(LiveTelemetry())

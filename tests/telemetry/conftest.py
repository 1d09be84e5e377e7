from __future__ import annotations

import pytest

from fleet.telemetry import flusher
from fleet.telemetry.live import live_telemetry


@pytest.fixture(autouse=True)
def fresh_live_telemetry():
    """Live telemetry is per process: every test starts from an empty one (on the embedded store: the root
    conftest's _embedded_live_telemetry), and no load shedding."""
    live_telemetry.reset()
    flusher.shedder = None
    yield live_telemetry
    live_telemetry.reset()
    flusher.shedder = None


def gpu(index: int = 0, **fields) -> dict:
    base = {"index": index, "uuid": f"GPU-{index:08d}", "utilization_gpu": 50.0, "utilization_memory": 20.0,
            "memory_used_bytes": 1024 * 1024 * 1024, "memory_total_bytes": 80 * 1024**3, "temperature_c": 60.0,
            "power_w": 300.0, "power_limit_w": 700.0, "sm_clock_mhz": 1980, "mem_clock_mhz": 2619,
            "energy_j": 1000.0, "ecc_corrected": 0, "ecc_uncorrected": 0}
    return {**base, **fields}


def metrics_frame(ts: float, gpus: list[dict], **extra) -> dict:
    return {"type": "metrics", "v": 1, "ts": ts, "gpus": gpus, **extra}

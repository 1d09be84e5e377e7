"""Per-minute rollup accumulators of one GPU (min / avg / max per metric, energy delta)."""

from __future__ import annotations

import math
from typing import Any

from fleet.agent.protocol import GpuSample


def minute_of(ts: float) -> int:
    return int(ts // 60) * 60


class Stat:
    """min / sum / max / count of one metric over one minute."""

    __slots__ = ("n", "total", "low", "high")

    def __init__(self) -> None:
        self.n, self.total, self.low, self.high = 0, 0.0, math.inf, -math.inf

    def add(self, value: float | None) -> None:
        if value is None:
            return
        self.n += 1
        self.total += value
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value

    def result(self) -> tuple[float | None, float | None, float | None]:
        if not self.n:
            return None, None, None
        return self.low, self.total / self.n, self.high


class GpuMinute:
    __slots__ = ("minute", "index", "uuid", "samples", "util", "mem", "temp", "power", "mem_total",
                 "energy_first", "energy_last")

    def __init__(self, minute: int, index: int, uuid: str) -> None:
        self.minute, self.index, self.uuid, self.samples = minute, index, uuid, 0
        self.util, self.mem, self.temp, self.power = Stat(), Stat(), Stat(), Stat()
        self.mem_total: int | None = None
        self.energy_first: float | None = None
        self.energy_last: float | None = None

    def add(self, gpu: GpuSample) -> None:
        self.samples += 1
        self.util.add(gpu.utilization_gpu)
        self.mem.add(gpu.memory_used_bytes)
        self.temp.add(gpu.temperature_c)
        self.power.add(gpu.power_w)
        if gpu.memory_total_bytes is not None:
            self.mem_total = gpu.memory_total_bytes
        if gpu.energy_j is not None:
            if self.energy_first is None:
                self.energy_first = gpu.energy_j
            self.energy_last = gpu.energy_j

    def row(self, node_id: int, energy_before: float | None) -> dict[str, Any]:
        """The rollup as model field values; energy is the counter delta since the previous minute's
        last reading when there is one (so no joule falls between two minutes)."""
        start = energy_before if energy_before is not None else self.energy_first
        energy = None
        if start is not None and self.energy_last is not None and self.energy_last >= start:
            energy = self.energy_last - start
        mem = self.mem.result()
        return {
            "node_id": node_id, "gpu_index": self.index, "gpu_uuid": self.uuid, "minute": self.minute,
            "samples": self.samples,
            **dict(zip(("util_min", "util_avg", "util_max"), self.util.result(), strict=True)),
            **dict(zip(("mem_used_min", "mem_used_avg", "mem_used_max"),
                       (None if v is None else int(v) for v in mem), strict=True)),
            "mem_total": self.mem_total,
            **dict(zip(("temp_min", "temp_avg", "temp_max"), self.temp.result(), strict=True)),
            **dict(zip(("power_min", "power_avg", "power_max"), self.power.result(), strict=True)),
            "energy_j": energy,
        }

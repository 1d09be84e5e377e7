"""Metrics frames and their parts: one sample of a node's GPUs and host (``metrics``) and the catch-up of
samples buffered while the socket was down (``metrics.batch``). The compact v2 encoding of ``metrics``
(fleet/agent/protocol_compact.py) decodes into the same ``Metrics``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from fleet.agent.protocol_base import (
    MAX_GPUS,
    Count,
    GpuIndex,
    GpuUuid,
    NonNegInt,
    Percent,
    ShortStr,
    Timestamp,
    _Frame,
    _Model,
)


def distinct_gpus(gpus: list[Any]) -> list[Any]:
    """One entry per GPU: a repeated uuid or index would make two rows (or series) of one device."""
    for key in ("uuid", "index"):
        seen: set[Any] = set()
        for gpu in gpus:
            value = getattr(gpu, key)
            if value in seen:
                raise ValueError(f"two GPUs have {key} {value!r}; each GPU must appear once")
            seen.add(value)
    return gpus


class GpuProcess(_Model):
    pid: NonNegInt
    used_memory_bytes: NonNegInt | None = None
    name: ShortStr | None = None


class GpuSample(_Model):
    index: GpuIndex
    uuid: GpuUuid
    lost: bool = False
    utilization_gpu: Percent | None = None
    utilization_memory: Percent | None = None
    memory_used_bytes: NonNegInt | None = None
    memory_total_bytes: NonNegInt | None = None
    temperature_c: Annotated[float, Field(ge=-273.15, le=1000)] | None = None
    power_w: Annotated[float, Field(ge=0, le=1e6)] | None = None
    power_limit_w: Annotated[float, Field(ge=0, le=1e6)] | None = None
    sm_clock_mhz: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    mem_clock_mhz: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    fan_percent: Percent | None = None
    energy_j: Annotated[float, Field(ge=0, le=1e18)] | None = None
    ecc_corrected: NonNegInt | None = None
    ecc_uncorrected: NonNegInt | None = None
    xids: Annotated[list[Count], Field(max_length=64)] = []
    processes: Annotated[list[GpuProcess], Field(max_length=256)] = []


class HostSample(_Model):
    cpu_percent: Percent | None = None
    memory_used_bytes: NonNegInt | None = None
    memory_total_bytes: NonNegInt | None = None
    disk_used_bytes: NonNegInt | None = None
    disk_total_bytes: NonNegInt | None = None


class Metrics(_Frame):
    type: Literal["metrics"]
    ts: Timestamp
    gpus: Annotated[list[GpuSample], Field(max_length=MAX_GPUS)] = []
    host: HostSample | None = None

    @field_validator("gpus")
    @classmethod
    def _distinct_gpus(cls, gpus: list[GpuSample]) -> list[GpuSample]:
        return distinct_gpus(gpus)


class MetricsPoint(_Model):
    """One buffered sample in a catch-up batch (processes left out: they only matter now)."""

    ts: Timestamp
    gpus: Annotated[list[GpuSample], Field(max_length=MAX_GPUS)] = []
    host: HostSample | None = None


class MetricsBatch(_Frame):
    """Samples taken while the socket was down, sent after a reconnect. ``sent`` is the agent's clock
    at sending, so the server can map ``ts`` onto its own clock."""

    type: Literal["metrics.batch"]
    sent: Timestamp
    seq: Count = 0  # the server acknowledges each batch it took (``ack``); only then are points dropped
    dropped: NonNegInt = 0  # points the agent's bounded buffer lost (oldest first) since its last report
    points: Annotated[list[MetricsPoint], Field(min_length=1, max_length=600)]

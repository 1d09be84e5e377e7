"""Deterministic fake GPUs for the demo, tests and benchmarks.

Everything derives from (seed, profile, GPU index, time): the same node name gets the same UUIDs on
every restart, and two collectors with the same seed agree on every value at the same instant.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fleet.agent.collectors.faults import OVERHEAT_C, Fault
from fleet.agent.collectors.jetson import JETSON_FIELDS
from fleet.agent.protocol import GpuInfo, GpuProcess, GpuSample

MIB = 1024 * 1024
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "simulated.fleet.local")
# Energy counters count from this instant so they stay monotonic across restarts.
_ENERGY_EPOCH = 1_700_000_000.0


@dataclass(frozen=True)
class Profile:
    gpu_name: str
    count: int
    memory_mib: int
    driver: str | None
    cuda: str | None
    idle_w: float
    limit_w: float
    sm_max_mhz: int
    mem_mhz: int
    mig: bool | None = False
    fan: bool = False
    ecc: bool = True
    host: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    reports: frozenset[str] | None = None  # the GpuSample fields the real collector fills (None: all)


PROFILES: dict[str, Profile] = {
    "h100x8": Profile("NVIDIA H100 80GB HBM3", 8, 81559, "550.54.15", "12.4", 70, 700, 1980, 2619,
                      host={"kind": "gpu_server"}),
    "a100x4": Profile("NVIDIA A100-SXM4-40GB", 4, 40960, "535.161.08", "12.2", 55, 400, 1410, 1215,
                      host={"kind": "gpu_server"}),
    "l40sx4": Profile("NVIDIA L40S", 4, 46068, "550.54.15", "12.4", 35, 350, 2520, 9001, mig=None,
                      host={"kind": "gpu_server"}),
    "jetson-orin": Profile("Orin (nvgpu)", 1, 30697, "540.3.0", "12.2", 5, 50, 1301, 3199, mig=None,
                           fan=True, ecc=False, host={"arch": "aarch64", "kind": "edge_device"},
                           reports=JETSON_FIELDS),
    "cpu-only": Profile("", 0, 0, None, None, 0, 0, 0, 0, host={"kind": "cpu_node"},
                        note="simulated profile cpu-only has no GPUs: reporting 0 GPUs"),
}

PATTERNS = ("idle", "busy", "bursty")


def simulated_hostname(seed: str) -> str:
    """``gpu-01`` → ``gpu-01.sim.fleet.local``: a DNS-shaped name derived from the node's name (the seed)."""
    label = re.sub(r"[^a-z0-9-]+", "-", seed.lower()).strip("-")[:63] or "node"
    return f"{label}.sim.fleet.local"


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) for these parts."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SimulatedCollector:
    def __init__(self, profile: str, seed: str, faults: tuple[Fault, ...] | list[Fault] = (),
                 started: float | None = None) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown simulation profile {profile!r}; valid: {', '.join(PROFILES)}")
        self.profile_name = profile
        self.profile = PROFILES[profile]
        self.seed = seed
        self.lost: set[int] = set()
        self.faults = list(faults)
        self.started = time.time() if started is None else started
        self._xids_sent: set[Fault] = set()

    def uuid(self, index: int) -> str:
        return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{self.seed}/{self.profile_name}/{index}')}"

    def pattern(self, index: int) -> str:
        return PATTERNS[int(_unit(self.seed, self.profile_name, index, "pattern") * len(PATTERNS))]

    def lose(self, index: int) -> None:
        """Fault injection: from now on this GPU is lost (gone from inventory, ``lost`` in samples)."""
        self.lost.add(index)

    def inventory(self) -> tuple[list[GpuInfo], str | None]:
        p = self.profile
        gpus = [
            GpuInfo(
                index=i,
                uuid=self.uuid(i),
                name=p.gpu_name,
                memory_total_bytes=p.memory_mib * MIB,
                driver_version=p.driver,
                cuda_version=p.cuda,
                mig_mode=p.mig,
            )
            for i in range(p.count)
            if i not in self.lost
        ]
        notes = [p.note] if p.note else []
        notes += [f"GPU {i} is lost" for i in sorted(self.lost) if i < p.count]
        return gpus, "; ".join(notes) or None

    def utilization(self, index: int, now: float) -> float:
        noise = _unit(self.seed, index, int(now))
        pattern = self.pattern(index)
        if pattern == "idle":
            return round(3 * noise, 1)
        if pattern == "busy":
            wave = 4 * math.sin(now / 37 + index)
            return round(min(100.0, 88 + 8 * noise + wave), 1)
        period = 30 + 90 * _unit(self.seed, index, "period")
        phase = period * _unit(self.seed, index, "phase")
        on = (now + phase) % period < period / 3
        return round(70 + 30 * noise if on else 2 * noise, 1)

    def model_loaded(self, index: int, now: float) -> bool:
        """Bursty GPUs load a model for two thirds of a slow (10-20 min) cycle: memory jumps then."""
        period = 600 + 600 * _unit(self.seed, index, "load-period")
        return (now + period * _unit(self.seed, index, "load-phase")) % period < period * 2 / 3

    def _apply_faults(self, now: float) -> dict[int, list[Fault]]:
        active: dict[int, list[Fault]] = {}
        for fault in self.faults:
            if fault.gpu < self.profile.count and fault.active(now - self.started):
                if fault.kind == "lost":
                    self.lost.add(fault.gpu)
                active.setdefault(fault.gpu, []).append(fault)
        return active

    def sample(self, now: float | None = None) -> list[GpuSample]:
        now = time.time() if now is None else now
        p = self.profile
        faults = self._apply_faults(now) if self.faults else {}
        samples = []
        for i in range(p.count):
            if i in self.lost:
                samples.append(GpuSample(index=i, uuid=self.uuid(i), lost=True))
                continue
            util = self.utilization(i, now)
            load = util / 100
            noise = _unit(self.seed, i, int(now), "n2")
            memory_total = p.memory_mib * MIB
            pattern = self.pattern(i)
            memory_share = {"idle": 0.01, "busy": 0.9, "bursty": 0.55}[pattern]
            if pattern == "bursty" and not self.model_loaded(i, now):
                memory_share, util, load = 0.004, 0.0, 0.0
            mean_power = p.idle_w + (p.limit_w - p.idle_w) * 0.4
            memory_used = int(memory_total * min(1.0, memory_share + 0.02 * noise))
            processes = []
            if memory_share > 0.1:
                pid = 1000 + int(_unit(self.seed, i, "pid") * 60000)
                name = "vllm" if pattern == "busy" else "python3"
                processes.append(GpuProcess(pid=pid, used_memory_bytes=memory_used, name=name))
            sample = GpuSample(
                index=i,
                uuid=self.uuid(i),
                utilization_gpu=util,
                utilization_memory=round(util * 0.6, 1),
                memory_used_bytes=memory_used,
                memory_total_bytes=memory_total,
                temperature_c=round(30 + 45 * load + 2 * noise, 1),
                power_w=round(p.idle_w + (p.limit_w - p.idle_w) * 0.9 * load + 3 * noise, 1),
                power_limit_w=float(p.limit_w),
                sm_clock_mhz=int(345 + (p.sm_max_mhz - 345) * min(1.0, load * 1.5)),
                mem_clock_mhz=p.mem_mhz,
                fan_percent=round(min(100.0, 30 + 50 * load), 1) if p.fan else None,
                energy_j=round(mean_power * max(0.0, now - _ENERGY_EPOCH + 86400 * i), 1),
                ecc_corrected=0 if p.ecc else None,
                ecc_uncorrected=0 if p.ecc else None,
                processes=processes,
            )
            if p.reports is not None:  # what the real collector cannot see stays None, as there
                sample = sample.model_copy(update={
                    name: [] if name == "processes" else None for name in GpuSample.model_fields
                    if name not in p.reports | {"index", "uuid", "lost", "xids"}})
            samples.append(self._faulty(sample, faults.get(i, ())))
        return samples

    def _faulty(self, sample: GpuSample, faults: list[Fault] | tuple) -> GpuSample:
        changes: dict[str, Any] = {}
        for fault in faults:
            if fault.kind == "overheat":
                changes["temperature_c"] = OVERHEAT_C
            elif fault.kind == "ecc":
                changes["ecc_uncorrected"] = 1 + (sample.ecc_uncorrected or 0)
            elif fault.kind == "xid" and fault not in self._xids_sent:
                self._xids_sent.add(fault)  # an XID is an event: reported once
                changes["xids"] = [*changes.get("xids", []), fault.code]
        return sample.model_copy(update=changes) if changes else sample

    def host_overrides(self) -> dict[str, Any]:
        """The profile's host facts and a simulated hostname of its own: every simulated node on one machine
        would otherwise report that machine's name, and /metrics' Hostname could not tell them apart."""
        return {**self.profile.host, "hostname": simulated_hostname(self.seed)}

    def close(self) -> None:
        pass

"""NVIDIA Jetson boards (Nano, Xavier, Orin): no NVML, so the GPU is read through ``jtop``
(jetson-stats) when it is installed, else through a long-lived ``tegrastats`` process.

The GPU shares the board's RAM: memory used/total are the board's. The same GpuSample fields as the
NVML collector are filled where the board has them (:data:`JETSON_FIELDS`); the rest stay None.
"""

from __future__ import annotations

import glob
import json
import logging
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fleet.agent.collectors.tegrastats import TegraReading, TegrastatsReader, parse_tegrastats
from fleet.agent.protocol import GpuInfo, GpuSample

log = logging.getLogger("fleet.agent")

# The GpuSample fields a Jetson can report (what the simulated ``jetson-orin`` profile reports too).
JETSON_FIELDS = frozenset({
    "utilization_gpu", "utilization_memory", "memory_used_bytes", "memory_total_bytes", "temperature_c",
    "power_w", "sm_clock_mhz", "mem_clock_mhz", "fan_percent", "energy_j",
})
DEVICE_TREE = Path("/proc/device-tree")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
CUDA_HOME = Path("/usr/local/cuda")
# pwm-fan duty (0-255): JetPack 5/6 hwmon, then JetPack 4's own file.
FAN_PATTERNS = ("/sys/devices/platform/pwm-fan/hwmon/hwmon*/pwm1", "/sys/devices/pwm-fan/cur_pwm")
_L4T = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
_CUDA_TXT = re.compile(r"CUDA Version (\d+)\.(\d+)")


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


@dataclass(frozen=True)
class Board:
    """What the board says about itself; every part optional."""

    model: str | None = None  # /proc/device-tree/model: "NVIDIA Jetson AGX Orin Developer Kit"
    serial: str | None = None
    l4t: str | None = None  # "35.4.1" from /etc/nv_tegra_release
    cuda: str | None = None  # "11.4" from /usr/local/cuda

    @classmethod
    def read(cls, device_tree: Path = DEVICE_TREE, tegra_release: Path = TEGRA_RELEASE,
             cuda_home: Path = CUDA_HOME) -> Board:
        release = _read(tegra_release) or ""
        match = _L4T.search(release)
        return cls(model=_read(device_tree / "model") or None, serial=_read(device_tree / "serial-number") or None,
                   l4t=f"{match.group(1)}.{match.group(2)}" if match else None, cuda=cuda_version(cuda_home))

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None or "jetson" in (self.model or "").lower()

    def gpu_uuid(self) -> str:
        """No GPU UUID on a Jetson: one derived from the board serial (stable across reinstalls)."""
        seed = self.serial or _read(Path("/etc/machine-id")) or "unknown-jetson"
        return f"JETSON-{uuid.uuid5(uuid.NAMESPACE_OID, seed)}"


def cuda_version(cuda_home: Path = CUDA_HOME) -> str | None:
    text = _read(cuda_home / "version.json")
    if text:
        try:
            version = json.loads(text)["cuda"]["version"]
            return ".".join(str(version).split(".")[:2])
        except (ValueError, KeyError, TypeError):
            pass
    match = _CUDA_TXT.search(_read(cuda_home / "version.txt") or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


def fan_percent(patterns: tuple[str, ...] = FAN_PATTERNS) -> float | None:
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            text = _read(Path(path))
            if text and text.isdigit():
                return round(min(int(text), 255) / 255 * 100, 1)
    return None


def jtop_available() -> bool:
    try:
        import jtop  # noqa: F401
    except Exception:  # jetson-stats not installed, or its import failing for any reason
        return False
    return True


def tegrastats_path() -> str | None:
    return shutil.which("tegrastats") or ("/usr/bin/tegrastats" if Path("/usr/bin/tegrastats").exists() else None)


# ---- sources: tegrastats or jtop, both giving a TegraReading -------------------------------------------


class TegrastatsSource:
    name = "tegrastats"

    def __init__(self, reader: TegrastatsReader | None = None) -> None:
        self.reader = reader or TegrastatsReader()

    def reading(self, wait: float = 0.0) -> TegraReading | None:
        line = self.reader.wait_first(wait) if wait else self.reader.latest()
        return None if line is None else parse_tegrastats(line)

    @property
    def error(self) -> str | None:
        return self.reader.error

    def close(self) -> None:
        self.reader.close()


def _first(mapping: Any) -> dict[str, Any]:
    if isinstance(mapping, dict) and mapping:
        value = next(iter(mapping.values()))
        return value if isinstance(value, dict) else {}
    return {}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def reading_from_jtop(jetson: Any) -> TegraReading:
    """jetson-stats 4.x attributes (``gpu``, ``memory``, ``temperature``, ``power``, ``fan``) as a reading."""
    gpu = _first(getattr(jetson, "gpu", {}))
    memory = getattr(jetson, "memory", {}) or {}
    ram, emc = memory.get("RAM") or {}, memory.get("EMC") or {}
    temps = {
        str(name).lower(): float(sensor["temp"])
        for name, sensor in (getattr(jetson, "temperature", {}) or {}).items()
        if isinstance(sensor, dict) and sensor.get("online", True) and _num(sensor.get("temp")) is not None
        and sensor["temp"] > -200
    }
    rails = {
        str(name): int(rail["power"])
        for name, rail in ((getattr(jetson, "power", {}) or {}).get("rail") or {}).items()
        if isinstance(rail, dict) and rail.get("online", True) and _num(rail.get("power")) is not None
    }
    speeds = _first(getattr(jetson, "fan", {})).get("speed") or []
    gpu_khz, emc_khz = _num((gpu.get("freq") or {}).get("cur")), _num(emc.get("cur"))
    ram_used, ram_total = _num(ram.get("used")), _num(ram.get("tot"))
    return TegraReading(
        ram_used_bytes=None if ram_used is None else int(ram_used * 1024),  # jtop counts kB
        ram_total_bytes=None if ram_total is None else int(ram_total * 1024),
        gpu_load=_num((gpu.get("status") or {}).get("load")),
        gpu_mhz=None if gpu_khz is None else int(gpu_khz // 1000),
        emc_load=_num(emc.get("val")),
        emc_mhz=None if emc_khz is None else int(emc_khz // 1000),
        temperatures=temps,
        rails_mw=rails,
        fan_percent=_num(speeds[0]) if speeds else None,
    )


class JtopSource:
    name = "jtop"

    def __init__(self, factory: Any = None) -> None:
        if factory is None:
            from jtop import jtop as factory  # jetson-stats; talks to its jtop.service
        self._jetson = factory()
        self._started = False
        self.error: str | None = None

    def reading(self, wait: float = 0.0) -> TegraReading | None:
        try:
            if not self._started:
                self._jetson.start()
                self._started = True
            return reading_from_jtop(self._jetson)
        except Exception as exc:  # jtop raises its own JtopException and plain errors when its service is down
            self.error = f"jtop failed: {exc}"
            return None

    def close(self) -> None:
        if self._started:
            try:
                self._jetson.close()
            except Exception as exc:
                log.debug("jtop close failed: %s", exc)


# ---- the collector -----------------------------------------------------------------------------------


class JetsonCollector:
    name = "jetson"

    def __init__(self, source: Any = None, board: Board | None = None,
                 fan_patterns: tuple[str, ...] = FAN_PATTERNS, first_wait: float = 3.0) -> None:
        self.board = board or Board.read()
        self.source = source or (JtopSource() if jtop_available() else TegrastatsSource())
        self.fan_patterns = fan_patterns
        self.first_wait = first_wait
        self._lock = threading.Lock()
        self._energy_j: float | None = None
        self._energy_at: float | None = None

    def _reading(self, wait: float = 0.0) -> TegraReading | None:
        reading = self.source.reading(wait=wait)
        if reading is None and isinstance(self.source, JtopSource) and tegrastats_path():
            # jtop installed but its service not answering: tegrastats reads the same counters.
            log.warning("%s; reading tegrastats instead", self.source.error)
            self.source.close()
            self.source = TegrastatsSource()
            reading = self.source.reading(wait=wait)
        return reading

    def inventory(self) -> tuple[list[GpuInfo], str | None]:
        with self._lock:
            reading = self._reading(wait=self.first_wait)
        note = None
        if reading is None:
            note = f"Jetson GPU found but {self.source.name} gave no reading yet" + (
                f" ({self.source.error})" if self.source.error else "")
        total = reading.ram_total_bytes if reading and reading.ram_total_bytes else psutil.virtual_memory().total
        gpu = GpuInfo(index=0, uuid=self.board.gpu_uuid(), name=(self.board.model or "NVIDIA Jetson")[:128],
                      memory_total_bytes=int(total), driver_version=self.board.l4t and f"L4T {self.board.l4t}",
                      cuda_version=self.board.cuda, mig_mode=None)
        return [gpu], note

    def sample(self, now: float | None = None) -> list[GpuSample]:
        with self._lock:
            reading = self._reading()
            if reading is None:
                return []
            return [self.sample_from(reading, time.monotonic() if now is None else now)]

    def sample_from(self, reading: TegraReading, now: float) -> GpuSample:
        power = reading.gpu_power_w
        if power is not None:  # a counter like NVML's total energy: integrate the GPU rail
            if self._energy_j is None:
                self._energy_j = 0.0
            elif self._energy_at is not None:
                self._energy_j += power * max(0.0, now - self._energy_at)
            self._energy_at = now
        fan = reading.fan_percent if reading.fan_percent is not None else fan_percent(self.fan_patterns)
        return GpuSample(
            index=0,
            uuid=self.board.gpu_uuid(),
            utilization_gpu=None if reading.gpu_load is None else min(reading.gpu_load, 100.0),
            utilization_memory=None if reading.emc_load is None else min(reading.emc_load, 100.0),
            memory_used_bytes=reading.ram_used_bytes,
            memory_total_bytes=reading.ram_total_bytes,
            temperature_c=reading.gpu_temperature,
            power_w=power,
            sm_clock_mhz=reading.gpu_mhz,
            mem_clock_mhz=reading.emc_mhz,
            fan_percent=None if fan is None else min(max(fan, 0.0), 100.0),
            energy_j=None if self._energy_j is None else round(self._energy_j, 3),
        )

    def host_overrides(self) -> dict[str, Any]:
        return {"kind": "edge_device"}

    def close(self) -> None:
        self.source.close()

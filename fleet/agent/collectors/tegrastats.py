"""``tegrastats`` on NVIDIA Jetson boards: its one-line reports parsed, and a long-lived reader.

The format differs by board and JetPack (L4T) release, and fields come and go (EMC needs root on
JetPack 6, a power-gated GPU reads ``GPU@-256C``), so every field is optional:

- Nano, JetPack 4:   ``GR3D_FREQ 0%@76`` ... ``GPU@27.5C`` ... ``POM_5V_IN 2153/2153 POM_5V_GPU 40/40``
- AGX Xavier, JP 4:  ``GR3D_FREQ 0%@1377`` ... ``GPU 0/0 CPU 311/311 SOC 1399/1399`` (mW, no unit)
- Xavier NX, JP 5:   ``GR3D_FREQ 0%@[114]`` ... ``VDD_IN 3785mW/3785mW VDD_CPU_GPU_CV 472mW/472mW``
- AGX Orin, JP 5/6:  ``GR3D_FREQ 0%@[305,305]`` ... ``GPU@-256C tj@44.3C VDD_GPU_SOC 2393mW/2393mW``
- Orin Nano, JP 6:   a timestamp first, ``GR3D_FREQ 0%`` (no clock), lower-case ``gpu@48.1C``
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("fleet.agent")

MIB = 1024 * 1024
# A sensor that is off (power-gated GPU, CV engines) reads -256 C on L4T.
SENSOR_OFF_C = -200.0

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")

# Rails that measure the GPU, best first: GPU alone, then rails it shares (the closest reading the board has).
GPU_RAILS = ("VDD_GPU", "GPU", "POM_5V_GPU", "VDD_GPU_SOC", "VDD_CPU_GPU_CV")
# The board's input rail (total power), by generation.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "SYS5V")


@dataclass(frozen=True)
class TegraReading:
    """One ``tegrastats`` report, or the same values read through jtop. Missing fields are None."""

    ram_used_bytes: int | None = None
    ram_total_bytes: int | None = None
    gpu_load: float | None = None  # GR3D_FREQ percent
    gpu_mhz: int | None = None
    emc_load: float | None = None  # memory controller percent
    emc_mhz: int | None = None
    temperatures: dict[str, float] = field(default_factory=dict)  # sensor (lower case) -> C, only live sensors
    rails_mw: dict[str, int] = field(default_factory=dict)  # rail -> instantaneous mW
    fan_percent: float | None = None  # tegrastats has none; jtop and sysfs do

    @property
    def gpu_temperature(self) -> float | None:
        """The GPU sensor, else the die's junction (``tj``: the GPU is on it)."""
        for name in ("gpu", "tj"):
            if name in self.temperatures:
                return self.temperatures[name]
        return None

    @property
    def gpu_power_w(self) -> float | None:
        for rail in GPU_RAILS:
            if rail in self.rails_mw:
                return self.rails_mw[rail] / 1000
        return None

    @property
    def board_power_w(self) -> float | None:
        for rail in INPUT_RAILS:
            if rail in self.rails_mw:
                return self.rails_mw[rail] / 1000
        return None


def parse_tegrastats(line: str) -> TegraReading:
    """Parse one report line; anything absent or unreadable stays None (never raises on text)."""
    ram = _RAM.search(line)
    gr3d = _GR3D.search(line)
    emc = _EMC.search(line)
    gpu_mhz = None
    if gr3d and gr3d.group(2):
        clocks = [int(c) for c in gr3d.group(2).split(",") if c]
        gpu_mhz = max(clocks) if clocks else None  # one clock per GPC on Orin
    temperatures = {name.lower(): float(value) for name, value in _TEMP.findall(line)
                    if float(value) > SENSOR_OFF_C}
    rails = {name: int(current) for name, current, _average in _RAIL.findall(line) if name != "RAM"}
    return TegraReading(
        ram_used_bytes=int(ram.group(1)) * MIB if ram else None,
        ram_total_bytes=int(ram.group(2)) * MIB if ram else None,
        gpu_load=float(gr3d.group(1)) if gr3d else None,
        gpu_mhz=gpu_mhz,
        emc_load=float(emc.group(1)) if emc else None,
        emc_mhz=int(emc.group(2)) if emc and emc.group(2) else None,
        temperatures=temperatures,
        rails_mw=rails,
    )


class TegrastatsReader:
    """``tegrastats --interval MS`` as one long-lived process; a thread keeps its latest line.

    Started on first use. If it exits, it is restarted at most every ``restart_after`` seconds; a line
    older than ``stale_after`` seconds (a stalled or dead process) is not reported as current.
    """

    def __init__(self, command: list[str] | None = None, interval_ms: int = 1000,
                 restart_after: float = 30.0, stale_after: float = 10.0) -> None:
        binary = shutil.which("tegrastats") or "/usr/bin/tegrastats"
        self.command = command or [binary, "--interval", str(interval_ms)]
        self.restart_after = restart_after
        self.stale_after = max(stale_after, 3 * interval_ms / 1000)
        self._lock = threading.Lock()
        self._latest: str | None = None
        self._latest_at = 0.0
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self.error: str | None = None

    def _start(self) -> None:
        self._started_at = time.monotonic()
        try:
            self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             stdin=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as exc:
            self.error = f"cannot run {self.command[0]}: {exc}"
            self._process = None
            return
        self.error = None
        self._thread = threading.Thread(target=self._pump, args=(self._process,), name="tegrastats", daemon=True)
        self._thread.start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip():
                with self._lock:
                    self._latest, self._latest_at = line.strip(), time.monotonic()
        code = process.wait()
        self.error = f"tegrastats exited with status {code}"

    def latest(self) -> str | None:
        """The newest line (starting or restarting the process when needed); None before the first."""
        alive = self._process is not None and self._process.poll() is None
        if not alive and (not self._started_at or time.monotonic() - self._started_at >= self.restart_after):
            self._start()
        with self._lock:
            if self._latest is not None and time.monotonic() - self._latest_at > self.stale_after:
                return None
            return self._latest

    def wait_first(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.latest()
            if line is not None or self.error:
                return line
            time.sleep(0.02)
        return self.latest()

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(timeout=3)

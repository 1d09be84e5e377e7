"""AMD GPUs through ROCm's ``amdsmi`` Python bindings.

Like the NVML collector, no library error leaves this module: an ``AmdSmiException`` from one call
(``AMDSMI_STATUS_NOT_SUPPORTED`` and friends) makes that field None, and fields the library reports as
``"N/A"`` are None too. Units as amdsmi gives them: VRAM in MB, power in W (``power_cap`` in uW),
temperature in C, clocks in MHz, energy as ticks x ``counter_resolution`` uJ.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from fleet.agent.protocol import GpuInfo, GpuProcess, GpuSample

log = logging.getLogger("fleet.agent")

MIB = 1024 * 1024
MAX_PROCESSES = 256


def load_amdsmi() -> Any:
    """The ``amdsmi`` module; ImportError/OSError when absent (it loads libamd_smi.so on import)."""
    import amdsmi

    return amdsmi


def _number(value: Any) -> float | None:
    """amdsmi answers "N/A" (or a dict with "value") where a number is missing."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _percent(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else min(max(number, 0.0), 100.0)


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None or number < 0 else int(number)


class AmdCollector:
    name = "amd"

    def __init__(self, module: Any = None) -> None:
        self.smi = module if module is not None else load_amdsmi()
        self._lock = threading.Lock()
        self._initialized = False
        self._handles: list[Any] = []
        self._uuids: list[str] = []

    def _call(self, fn_name: str, *args: Any) -> Any:
        """``amdsmi.<fn_name>(*args)``, or None when the library cannot answer (or lacks the call)."""
        fn: Callable[..., Any] | None = getattr(self.smi, fn_name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except self.smi.AmdSmiException as exc:
            log.debug("amdsmi %s failed: %s", fn_name, exc)
            return None

    def _init(self) -> str | None:
        if self._initialized:
            return None
        try:
            flags = getattr(getattr(self.smi, "AmdSmiInitFlags", None), "INIT_AMD_GPUS", None)
            self.smi.amdsmi_init(*(() if flags is None else (flags,)))
        except self.smi.AmdSmiException as exc:
            return f"amdsmi failed to initialise ({exc}): reporting 0 AMD GPUs"
        self._initialized = True
        return None

    def _discover(self) -> str | None:
        try:
            self._handles = list(self.smi.amdsmi_get_processor_handles())
        except self.smi.AmdSmiException as exc:
            self._handles = []
            return f"amdsmi could not list GPUs ({exc}): reporting 0 AMD GPUs"
        self._uuids = [self._uuid(index, handle) for index, handle in enumerate(self._handles)]
        return None if self._handles else "amdsmi reports no AMD GPUs: reporting 0 GPUs"

    def _uuid(self, index: int, handle: Any) -> str:
        value = self._call("amdsmi_get_gpu_device_uuid", handle)
        if isinstance(value, str) and value.strip():
            return value.strip()[:96]
        serial = (self._call("amdsmi_get_gpu_asic_info", handle) or {}).get("asic_serial")
        if isinstance(serial, str) and serial.strip() and serial != "N/A":
            return f"AMD-{serial.strip()}"[:96]
        bdf = self._call("amdsmi_get_gpu_device_bdf", handle)
        return f"AMD-{bdf or index}"[:96]

    # ---- inventory ------------------------------------------------------------------------------------

    def inventory(self) -> tuple[list[GpuInfo], str | None]:
        with self._lock:
            note = self._init() or self._discover()
            if not self._handles:
                return [], note
            return [self._gpu_info(i, h) for i, h in enumerate(self._handles)], None

    def _gpu_info(self, index: int, handle: Any) -> GpuInfo:
        asic = self._call("amdsmi_get_gpu_asic_info", handle) or {}
        board = self._call("amdsmi_get_gpu_board_info", handle) or {}
        name = next((n for n in (asic.get("market_name"), board.get("product_name"))
                     if isinstance(n, str) and n.strip() and n != "N/A"), "unknown AMD GPU")
        vram = self._call("amdsmi_get_gpu_vram_usage", handle) or {}
        total_mb = _int(vram.get("vram_total"))
        driver = (self._call("amdsmi_get_gpu_driver_info", handle) or {}).get("driver_version")
        return GpuInfo(
            index=index,
            uuid=self._uuids[index],
            name=name.strip()[:128],
            memory_total_bytes=None if total_mb is None else total_mb * MIB,
            driver_version=driver[:40] if isinstance(driver, str) and driver else None,
            cuda_version=None,
            mig_mode=None,
            interconnect=self._xgmi(handle),
        )

    def _xgmi(self, handle: Any) -> str | None:
        info = self._call("amdsmi_get_xgmi_info", handle)
        if not isinstance(info, dict) or _int(info.get("xgmi_hive_id")) in (None, 0):
            return None
        lanes = _int(info.get("xgmi_lanes"))
        return f"xgmi hive {int(info['xgmi_hive_id']):#x}" + (f", {lanes} lanes" if lanes else "")

    # ---- samples --------------------------------------------------------------------------------------

    def sample(self) -> list[GpuSample]:
        with self._lock:
            if not self._initialized:
                return []
            return [self._sample_one(i, h) for i, h in enumerate(self._handles)]

    def _temperature(self, handle: Any) -> float | None:
        kinds = getattr(self.smi, "AmdSmiTemperatureType", None)
        metric = getattr(getattr(self.smi, "AmdSmiTemperatureMetric", None), "CURRENT", None)
        for sensor in ("EDGE", "HOTSPOT", "JUNCTION"):  # MI300 has no edge sensor
            kind = getattr(kinds, sensor, None)
            if kind is not None and metric is not None:
                value = _number(self._call("amdsmi_get_temp_metric", handle, kind, metric))
                if value is not None:
                    return value
        return None

    def _clock(self, handle: Any, name: str) -> int | None:
        kind = getattr(getattr(self.smi, "AmdSmiClkType", None), name, None)
        info = self._call("amdsmi_get_clock_info", handle, kind) if kind is not None else None
        if not isinstance(info, dict):
            return None
        return _int(info.get("clk", info.get("cur_clk")))  # "cur_clk" before ROCm 6.1

    def _power(self, handle: Any) -> tuple[float | None, float | None]:
        info = self._call("amdsmi_get_power_info", handle) or {}
        power = None
        for key in ("socket_power", "current_socket_power", "average_socket_power"):  # ROCm 7, MI300, older
            power = _number(info.get(key))
            if power is not None:
                break
        cap_uw = _number((self._call("amdsmi_get_power_cap_info", handle) or {}).get("power_cap"))
        return power, None if cap_uw is None else cap_uw / 1e6

    def _energy(self, handle: Any) -> float | None:
        info = self._call("amdsmi_get_energy_count", handle) or {}
        ticks = _number(info.get("energy_accumulator", info.get("power")))
        resolution = _number(info.get("counter_resolution"))
        return None if ticks is None or resolution is None else ticks * resolution / 1e6

    def _fan(self, handle: Any) -> float | None:
        speed, top = _number(self._call("amdsmi_get_gpu_fan_speed", handle, 0)), None
        if speed is not None:
            top = _number(self._call("amdsmi_get_gpu_fan_speed_max", handle, 0))
        return None if speed is None or not top else _percent(speed / top * 100)

    def _processes(self, handle: Any) -> list[GpuProcess]:
        processes = []
        for proc in (self._call("amdsmi_get_gpu_process_list", handle) or [])[:MAX_PROCESSES]:
            if not isinstance(proc, dict) or _int(proc.get("pid")) is None:
                continue  # ROCm before 6.0 returned opaque handles
            name = proc.get("name")
            processes.append(GpuProcess(pid=_int(proc["pid"]), used_memory_bytes=_int(proc.get("mem")) or None,
                                        name=name[:128] if isinstance(name, str) and name else None))
        return processes

    def _sample_one(self, index: int, handle: Any) -> GpuSample:
        activity = self._call("amdsmi_get_gpu_activity", handle) or {}
        vram = self._call("amdsmi_get_gpu_vram_usage", handle) or {}
        used_mb, total_mb = _int(vram.get("vram_used")), _int(vram.get("vram_total"))
        ecc = self._call("amdsmi_get_gpu_total_ecc_count", handle) or {}
        power, limit = self._power(handle)
        return GpuSample(
            index=index,
            uuid=self._uuids[index],
            utilization_gpu=_percent(activity.get("gfx_activity")),
            utilization_memory=_percent(activity.get("umc_activity")),
            memory_used_bytes=None if used_mb is None else used_mb * MIB,
            memory_total_bytes=None if total_mb is None else total_mb * MIB,
            temperature_c=self._temperature(handle),
            power_w=power,
            power_limit_w=limit,
            sm_clock_mhz=self._clock(handle, "GFX"),
            mem_clock_mhz=self._clock(handle, "MEM"),
            fan_percent=self._fan(handle),
            energy_j=self._energy(handle),
            ecc_corrected=_int(ecc.get("correctable_count")),
            ecc_uncorrected=_int(ecc.get("uncorrectable_count")),
            processes=self._processes(handle),
        )

    def host_overrides(self) -> dict[str, Any]:
        return {"kind": "gpu_server"} if self._handles else {}

    def close(self) -> None:
        with self._lock:
            if self._initialized:
                self._initialized = False
                try:
                    self.smi.amdsmi_shut_down()
                except self.smi.AmdSmiException:
                    pass

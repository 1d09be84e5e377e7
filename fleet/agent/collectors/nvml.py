"""Real NVIDIA GPUs through NVML (nvidia-ml-py, ``import pynvml``).

Every NVML call can fail on its own: ``NotSupported`` (and any other per-call NVMLError) makes that
one field None; ``GpuIsLost`` takes the whole GPU out (skipped in inventory, ``lost=True`` in
samples). No NVMLError ever leaves this module.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psutil
import pynvml

from fleet.agent.protocol import GpuInfo, GpuProcess, GpuSample

log = logging.getLogger("fleet.agent")

T = TypeVar("T")

NO_LIBRARY_NOTE = "no NVIDIA driver found (libnvidia-ml not loadable): reporting 0 GPUs"
MAX_EVENTS_PER_SAMPLE = 64
MAX_PROCESSES = 256
NO_DRIVER_NOTE = "NVIDIA driver not loaded (libnvidia-ml found, kernel driver missing): reporting 0 GPUs"


class _SkipGpu(Exception):
    pass


def _text(value: Any) -> str:
    # nvidia-ml-py before 11.515 returned bytes for strings.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _call(fn: Callable[..., T], *args: Any) -> T | None:
    """``fn(*args)``, or None when NVML cannot answer; a lost GPU still raises."""
    try:
        return fn(*args)
    except pynvml.NVMLError_GpuIsLost:
        raise
    except pynvml.NVMLError as exc:
        log.debug("NVML %s failed: %s", getattr(fn, "__name__", fn), exc)
        return None


def cuda_version(raw: int | None) -> str | None:
    """NVML's integer CUDA driver version (12040) as "12.4"."""
    if raw is None or raw <= 0:
        return None
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _clamp_percent(value: float | None) -> float | None:
    # NVML documents fan speed "may exceed 100%"; the wire format caps percentages at 100.
    return None if value is None else float(min(max(value, 0), 100))


def _scaled(value: float | None, divisor: float) -> float | None:
    return None if value is None else value / divisor


class NvmlCollector:
    name = "nvml"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initialized = False
        self._uuids: dict[int, str] = {}
        self._lost: set[int] = set()
        self._event_set: Any = None
        self._events_registered: set[int] = set()
        self._pending_xids: dict[int, list[int]] = {}

    # ---- setup ------------------------------------------------------------------------------------

    def _init(self) -> str | None:
        """Initialise NVML once; a note when it is unavailable (retried on the next inventory)."""
        if self._initialized:
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            return NO_LIBRARY_NOTE
        except pynvml.NVMLError_DriverNotLoaded:
            return NO_DRIVER_NOTE
        except pynvml.NVMLError as exc:
            return f"NVML failed to initialise ({exc}): reporting 0 GPUs"
        self._initialized = True
        return None

    def _count(self) -> int | str:
        try:
            return int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            return f"NVML could not count GPUs ({exc}): reporting 0 GPUs"

    def _mark_lost(self, index: int) -> None:
        if index not in self._lost:
            self._lost.add(index)
            log.warning("GPU %d is lost (NVML: GPU is lost); reporting it as lost", index)

    def _handle_and_uuid(self, index: int) -> tuple[Any, str]:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = self._uuids.get(index)
        if uuid is None:
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            self._uuids[index] = uuid
        return handle, uuid

    # ---- inventory --------------------------------------------------------------------------------

    def inventory(self) -> tuple[list[GpuInfo], str | None]:
        with self._lock:
            note = self._init()
            if note:
                return [], note
            count = self._count()
            if isinstance(count, str):
                return [], count
            if count == 0:
                return [], "NVML reports no NVIDIA GPUs: reporting 0 GPUs"
            driver = _call(pynvml.nvmlSystemGetDriverVersion)
            cuda = cuda_version(_call(pynvml.nvmlSystemGetCudaDriverVersion_v2))
            gpus: list[GpuInfo] = []
            problems: list[str] = []
            for index in range(count):
                try:
                    gpus.append(self._gpu_info(index, None if driver is None else _text(driver), cuda))
                except _SkipGpu as skip:
                    problems.append(str(skip))
            return gpus, "; ".join(problems) or None

    def _gpu_info(self, index: int, driver: str | None, cuda: str | None) -> GpuInfo:
        if index in self._lost:
            raise _SkipGpu(f"GPU {index} is lost")
        try:
            try:
                handle, uuid = self._handle_and_uuid(index)
            except pynvml.NVMLError_GpuIsLost:
                raise
            except pynvml.NVMLError as exc:
                raise _SkipGpu(f"GPU {index} skipped (no handle/UUID: {exc})") from None
            name = _call(pynvml.nvmlDeviceGetName, handle)
            memory = _call(pynvml.nvmlDeviceGetMemoryInfo, handle)
            mig = _call(pynvml.nvmlDeviceGetMigMode, handle)
        except pynvml.NVMLError_GpuIsLost:
            self._mark_lost(index)
            raise _SkipGpu(f"GPU {index} is lost") from None
        return GpuInfo(
            index=index,
            uuid=uuid,
            name=_text(name)[:128] if name is not None else "unknown NVIDIA GPU",
            memory_total_bytes=None if memory is None else int(memory.total),
            driver_version=driver,
            cuda_version=cuda,
            mig_mode=None if mig is None else mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE,
        )

    # ---- samples ----------------------------------------------------------------------------------

    def sample(self) -> list[GpuSample]:
        with self._lock:
            if not self._initialized:
                return []
            count = self._count()
            if isinstance(count, str):
                return []
            self._collect_xids(count)
            samples: list[GpuSample] = []
            for index in range(count):
                if index not in self._lost:
                    try:
                        samples.append(self._sample_one(index))
                        continue
                    except pynvml.NVMLError_GpuIsLost:
                        self._mark_lost(index)
                    except pynvml.NVMLError as exc:
                        log.debug("GPU %d has no handle/UUID (%s); left out of this sample", index, exc)
                        continue
                uuid = self._uuids.get(index, f"lost-gpu-{index}")
                xids = self._pending_xids.pop(index, [])[:64]  # XID 79 often comes with the loss
                samples.append(GpuSample(index=index, uuid=uuid, lost=True, xids=xids))
            return samples

    # ---- XID events (NVML event set, read without blocking) -----------------------------------------

    def _register_events(self, count: int) -> None:
        if self._event_set is None:
            try:
                self._event_set = pynvml.nvmlEventSetCreate()
            except pynvml.NVMLError as exc:
                log.debug("no NVML event set (%s): XIDs not reported", exc)
                self._event_set = False
        if not self._event_set:
            return
        for index in range(count):
            if index in self._events_registered or index in self._lost:
                continue
            self._events_registered.add(index)  # tried once: NotSupported stays NotSupported
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set)
            except pynvml.NVMLError as exc:
                log.debug("GPU %d: XID events unavailable (%s)", index, exc)

    def _collect_xids(self, count: int) -> None:
        """Drain pending XID events (timeout 0: never blocks the sample) into per-GPU lists."""
        self._register_events(count)
        if not self._event_set:
            return
        for _ in range(MAX_EVENTS_PER_SAMPLE):
            try:
                event = pynvml.nvmlEventSetWait_v2(self._event_set, 0)
            except pynvml.NVMLError_Timeout:
                return
            except pynvml.NVMLError as exc:
                log.debug("NVML event wait failed: %s", exc)
                return
            if event.eventType != pynvml.nvmlEventTypeXidCriticalError:
                continue
            try:
                index = int(pynvml.nvmlDeviceGetIndex(event.device))
            except pynvml.NVMLError:
                continue
            self._pending_xids.setdefault(index, []).append(int(event.eventData))

    # ---- per-field reads ----------------------------------------------------------------------------

    def _processes(self, handle: Any) -> list[GpuProcess]:
        running = _call(pynvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        processes = []
        for proc in running[:MAX_PROCESSES]:
            used = getattr(proc, "usedGpuMemory", None)
            try:
                name = psutil.Process(int(proc.pid)).name()[:128]
            except (psutil.Error, ValueError):
                name = None  # another PID namespace (containers) or already gone
            processes.append(GpuProcess(pid=int(proc.pid), used_memory_bytes=int(used) if used else None, name=name))
        return processes

    def _temperature(self, handle: Any) -> float | None:
        newer = getattr(pynvml, "nvmlDeviceGetTemperatureV", None)
        if newer is not None:
            try:
                return float(newer(handle, pynvml.NVML_TEMPERATURE_GPU))
            except pynvml.NVMLError_GpuIsLost:
                raise
            except pynvml.NVMLError:
                pass  # drivers before 535 lack the V call; try the classic one
        value = _call(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
        return None if value is None else float(value)

    def _sample_one(self, index: int) -> GpuSample:
        handle, uuid = self._handle_and_uuid(index)
        util = _call(pynvml.nvmlDeviceGetUtilizationRates, handle)
        memory = _call(pynvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = _call(pynvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = _call(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        energy_mj = _call(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        processes = self._processes(handle)
        return GpuSample(
            index=index,
            uuid=uuid,
            utilization_gpu=None if util is None else _clamp_percent(util.gpu),
            utilization_memory=None if util is None else _clamp_percent(util.memory),
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            temperature_c=self._temperature(handle),
            power_w=_scaled(power_mw, 1000),
            power_limit_w=_scaled(limit_mw, 1000),
            sm_clock_mhz=_call(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM),
            mem_clock_mhz=_call(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM),
            fan_percent=_clamp_percent(_call(pynvml.nvmlDeviceGetFanSpeed, handle)),
            energy_j=_scaled(energy_mj, 1000),
            ecc_corrected=_call(
                pynvml.nvmlDeviceGetTotalEccErrors,
                handle,
                pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                pynvml.NVML_VOLATILE_ECC,
            ),
            ecc_uncorrected=_call(
                pynvml.nvmlDeviceGetTotalEccErrors,
                handle,
                pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                pynvml.NVML_VOLATILE_ECC,
            ),
            xids=self._pending_xids.pop(index, [])[:64],
            processes=processes,
        )

    def host_overrides(self) -> dict[str, Any]:
        # A host whose GPUs NVML sees is a GPU server (the server keeps an edge device an edge device).
        return {"kind": "gpu_server"} if self._uuids else {}

    def close(self) -> None:
        with self._lock:
            if self._initialized:
                self._initialized = False
                if self._event_set:
                    try:
                        pynvml.nvmlEventSetFree(self._event_set)
                    except pynvml.NVMLError:
                        pass
                    self._event_set = None
                try:
                    pynvml.nvmlShutdown()
                except pynvml.NVMLError:
                    pass

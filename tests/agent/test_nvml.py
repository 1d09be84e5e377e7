"""NVML collector against a fake NVML built from pynvml's real error classes."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest

from fleet.agent.collectors.nvml import NO_LIBRARY_NOTE, NvmlCollector, cuda_version

MIB = 1024 * 1024


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # returns the matching subclass, as pynvml itself raises


class FakeNvml:
    """Eight H100s by default. ``unsupported`` names calls that raise NotSupported (for every GPU, or
    ``(name, index)`` for one); ``lost`` maps a GPU index to the calls that say GpuIsLost ("*": all)."""

    def __init__(self, count: int = 8):
        self.count = count
        self.init_error: int | None = None
        self.unsupported: set = set()
        self.lost: dict[int, set[str]] = {}
        self.fan = 40

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    def _check(self, name: str, handle=None) -> None:
        index = None if handle is None else handle.index
        lost = self.lost.get(index, set())
        if "*" in lost or name in lost:
            raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
        if name in self.unsupported or (name, index) in self.unsupported:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self):
        if self.init_error is not None:
            raise nvml_error(self.init_error)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        self._check("nvmlDeviceGetCount")
        return self.count

    def nvmlSystemGetDriverVersion(self):
        self._check("nvmlSystemGetDriverVersion")
        return b"550.54.15"  # old pynvml returned bytes

    def nvmlSystemGetCudaDriverVersion_v2(self):
        self._check("nvmlSystemGetCudaDriverVersion_v2")
        return 12040

    def nvmlDeviceGetHandleByIndex(self, index):
        self._check("nvmlDeviceGetHandleByIndex", SimpleNamespace(index=index))
        return SimpleNamespace(index=index)

    def nvmlDeviceGetUUID(self, h):
        self._check("nvmlDeviceGetUUID", h)
        return f"GPU-0000000{h.index}-aaaa-bbbb-cccc-dddddddddddd".encode()

    def nvmlDeviceGetName(self, h):
        self._check("nvmlDeviceGetName", h)
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        self._check("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(total=81559 * MIB, used=1000 * MIB * (h.index + 1), free=0)

    def nvmlDeviceGetMigMode(self, h):
        self._check("nvmlDeviceGetMigMode", h)
        return [1, 1] if h.index == 0 else [0, 0]

    def nvmlDeviceGetUtilizationRates(self, h):
        self._check("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=50 + h.index, memory=20)

    def nvmlDeviceGetTemperatureV(self, h, sensor):
        self._check("nvmlDeviceGetTemperatureV", h)
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 60

    def nvmlDeviceGetTemperature(self, h, sensor):
        self._check("nvmlDeviceGetTemperature", h)
        return 61

    def nvmlDeviceGetPowerUsage(self, h):
        self._check("nvmlDeviceGetPowerUsage", h)
        return 350_500  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        self._check("nvmlDeviceGetEnforcedPowerLimit", h)
        return 700_000

    def nvmlDeviceGetClockInfo(self, h, clock):
        self._check("nvmlDeviceGetClockInfo", h)
        return {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}[clock]

    def nvmlDeviceGetFanSpeed(self, h):
        self._check("nvmlDeviceGetFanSpeed", h)
        return self.fan

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._check("nvmlDeviceGetTotalEnergyConsumption", h)
        return 123_456_789  # mJ

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter):
        self._check("nvmlDeviceGetTotalEccErrors", h)
        assert counter == pynvml.NVML_VOLATILE_ECC
        return 7 if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else 1


@pytest.fixture
def nvml(monkeypatch):
    return FakeNvml().install(monkeypatch)


def test_error_helper_builds_real_subclasses():
    assert isinstance(nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST), pynvml.NVMLError_GpuIsLost)
    assert isinstance(nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED), pynvml.NVMLError_NotSupported)


def test_library_missing_reports_zero_gpus_with_note(nvml):
    nvml.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    collector = NvmlCollector()
    gpus, note = collector.inventory()
    assert gpus == []
    assert note == NO_LIBRARY_NOTE
    assert "no NVIDIA driver found" in note
    assert collector.sample() == []


def test_driver_not_loaded_and_other_init_errors(nvml):
    nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    gpus, note = NvmlCollector().inventory()
    assert gpus == [] and "driver not loaded" in note
    nvml.init_error = pynvml.NVML_ERROR_NO_PERMISSION
    gpus, note = NvmlCollector().inventory()
    assert gpus == [] and "Insufficient Permissions" in note


def test_init_is_retried_after_a_failure_and_done_once_after_success(nvml, monkeypatch):
    calls = []
    nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    original = nvml.nvmlInit
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: (calls.append(1), original()))
    collector = NvmlCollector()
    assert collector.inventory()[0] == []
    nvml.init_error = None
    assert len(collector.inventory()[0]) == 8
    collector.inventory()
    collector.sample()
    assert len(calls) == 2


def test_full_inventory_and_sample(nvml):
    collector = NvmlCollector()
    gpus, note = collector.inventory()
    assert note is None
    assert [g.index for g in gpus] == list(range(8))
    first = gpus[0]
    assert first.uuid == "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd"  # decoded from bytes
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.memory_total_bytes == 81559 * MIB
    assert first.driver_version == "550.54.15"
    assert first.cuda_version == "12.4"
    assert first.mig_mode is True and gpus[1].mig_mode is False

    samples = collector.sample()
    assert len(samples) == 8
    s = samples[2]
    assert (s.index, s.uuid, s.lost) == (2, gpus[2].uuid, False)
    assert s.utilization_gpu == 52 and s.utilization_memory == 20
    assert s.memory_used_bytes == 3000 * MIB and s.memory_total_bytes == 81559 * MIB
    assert s.temperature_c == 60
    assert s.power_w == pytest.approx(350.5) and s.power_limit_w == pytest.approx(700)
    assert (s.sm_clock_mhz, s.mem_clock_mhz) == (1980, 2619)
    assert s.fan_percent == 40
    assert s.energy_j == pytest.approx(123_456.789)
    assert (s.ecc_corrected, s.ecc_uncorrected) == (7, 1)


def test_not_supported_fields_are_none_and_others_intact(nvml):
    nvml.unsupported |= {
        "nvmlSystemGetCudaDriverVersion_v2",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetFanSpeed",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetTotalEccErrors",
        ("nvmlDeviceGetPowerUsage", 1),
    }
    collector = NvmlCollector()
    gpus, note = collector.inventory()
    assert len(gpus) == 8 and note is None
    assert gpus[0].cuda_version is None and gpus[0].mig_mode is None
    assert gpus[0].driver_version == "550.54.15" and gpus[0].memory_total_bytes == 81559 * MIB
    samples = collector.sample()
    s0, s1 = samples[0], samples[1]
    for s in (s0, s1):
        assert s.fan_percent is None and s.energy_j is None
        assert s.ecc_corrected is None and s.ecc_uncorrected is None
        assert s.utilization_gpu is not None and s.temperature_c == 60 and s.power_limit_w == 700
    assert s0.power_w == pytest.approx(350.5)
    assert s1.power_w is None


def test_temperature_falls_back_to_the_classic_call(nvml):
    nvml.unsupported.add("nvmlDeviceGetTemperatureV")
    collector = NvmlCollector()
    collector.inventory()
    assert {s.temperature_c for s in collector.sample()} == {61}
    nvml.unsupported.add("nvmlDeviceGetTemperature")
    assert {s.temperature_c for s in collector.sample()} == {None}


def test_fan_over_100_percent_is_clamped(nvml):
    nvml.fan = 120
    collector = NvmlCollector()
    collector.inventory()
    assert collector.sample()[0].fan_percent == 100


def test_one_lost_gpu_among_eight(nvml):
    nvml.lost[3] = {"*"}
    collector = NvmlCollector()
    gpus, note = collector.inventory()
    assert len(gpus) == 7
    assert 3 not in [g.index for g in gpus]
    assert "GPU 3 is lost" in note
    samples = collector.sample()
    assert [s.index for s in samples] == list(range(8))
    assert [s.index for s in samples if s.lost] == [3]
    assert samples[3].utilization_gpu is None and samples[3].uuid
    assert all(s.utilization_gpu is not None for s in samples if s.index != 3)


def test_gpu_lost_in_a_field_call_after_inventory(nvml):
    collector = NvmlCollector()
    gpus, _ = collector.inventory()
    uuid3 = gpus[3].uuid
    nvml.lost[3] = {"nvmlDeviceGetPowerUsage"}  # lost surfaces in the middle of a sample
    samples = collector.sample()
    assert samples[3].lost is True and samples[3].uuid == uuid3
    assert samples[3].power_w is None and samples[3].utilization_gpu is None
    assert not any(s.lost for s in samples if s.index != 3)
    # once lost, it stays lost (and is not probed again), and the inventory leaves it out
    nvml.lost.clear()
    assert collector.sample()[3].lost is True
    gpus, note = collector.inventory()
    assert len(gpus) == 7 and "GPU 3 is lost" in note


def test_lost_in_a_field_during_inventory_skips_that_gpu(nvml):
    nvml.lost[5] = {"nvmlDeviceGetMemoryInfo"}
    gpus, note = NvmlCollector().inventory()
    assert [g.index for g in gpus] == [0, 1, 2, 3, 4, 6, 7]
    assert note == "GPU 5 is lost"


def test_no_nvml_error_escapes(nvml):
    nvml.unsupported.add("nvmlDeviceGetCount")
    collector = NvmlCollector()
    gpus, note = collector.inventory()
    assert gpus == [] and "could not count" in note
    assert collector.sample() == []
    nvml.unsupported.clear()
    nvml.unsupported.add(("nvmlDeviceGetUUID", 2))
    gpus, note = collector.inventory()
    assert [g.index for g in gpus] == [0, 1, 3, 4, 5, 6, 7] and "GPU 2 skipped" in note
    assert [s.index for s in collector.sample()] == [0, 1, 3, 4, 5, 6, 7]


def test_cuda_version_format():
    assert cuda_version(12040) == "12.4"
    assert cuda_version(11080) == "11.8"
    assert cuda_version(12020) == "12.2"
    assert cuda_version(None) is None and cuda_version(0) is None


def test_real_nvml_never_raises():
    """Against whatever this machine has (usually no driver): an answer, never an exception."""
    collector = NvmlCollector()
    try:
        gpus, note = collector.inventory()
        assert gpus or note
        collector.sample()
    finally:
        collector.close()


def test_kind_and_selection_follow_what_nvml_sees(nvml):
    from fleet.agent.collectors import probe_nvml, select_collector

    collector = NvmlCollector()
    assert collector.host_overrides() == {}  # nothing seen yet
    collector.inventory()
    assert collector.host_overrides() == {"kind": "gpu_server"}
    selection = select_collector({"nvml": probe_nvml})
    assert selection.used == "nvml" and len(selection.collector.inventory()[0]) == 8
    nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED  # the driver broke: unsure, not a CPU node
    selection.collector.close()
    broken = select_collector({"nvml": probe_nvml})
    assert broken.used == "none" and "driver not loaded" in broken.skipped["nvml"]
    assert broken.collector.host_overrides() == {}
    nvml.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND  # no NVIDIA stack at all
    assert select_collector({"nvml": probe_nvml}).collector.host_overrides() == {"kind": "cpu_node"}

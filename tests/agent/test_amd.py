"""AMD collector against a fake ``amdsmi`` module: the real call names, return shapes (ROCm 6.x: "N/A"
for missing values, VRAM in MB, power cap in uW) and the real exception hierarchy
(AmdSmiException > AmdSmiLibraryException > AmdSmiRetryException / AmdSmiTimeoutException)."""

from __future__ import annotations

import sys
import types
from enum import IntEnum

import pytest

from fleet.agent.collectors import probe_amd, probe_jetson, select_collector
from fleet.agent.collectors.amd import AmdCollector

MIB = 1024 * 1024
NOT_SUPPORTED, NOT_INIT, DRIVER_NOT_LOADED = 2, 32, 34


def fake_amdsmi(count: int = 2) -> types.ModuleType:
    smi = types.ModuleType("amdsmi")

    class AmdSmiException(Exception):
        pass

    class AmdSmiLibraryException(AmdSmiException):
        def __init__(self, err_code):
            super().__init__(err_code)
            self.err_code = abs(err_code)

        def get_error_code(self):
            return self.err_code

    class AmdSmiRetryException(AmdSmiLibraryException):
        def __init__(self):
            super().__init__(9)

    class AmdSmiTimeoutException(AmdSmiLibraryException):
        def __init__(self):
            super().__init__(8)

    class AmdSmiParameterException(AmdSmiException):
        pass

    smi.AmdSmiException = AmdSmiException
    smi.AmdSmiLibraryException = AmdSmiLibraryException
    smi.AmdSmiRetryException = AmdSmiRetryException
    smi.AmdSmiTimeoutException = AmdSmiTimeoutException
    smi.AmdSmiParameterException = AmdSmiParameterException
    smi.AmdSmiInitFlags = IntEnum("AmdSmiInitFlags", {"INIT_ALL_PROCESSORS": 0xFFFFFFFF, "INIT_AMD_GPUS": 2})
    smi.AmdSmiTemperatureType = IntEnum("AmdSmiTemperatureType", {"EDGE": 0, "HOTSPOT": 1, "JUNCTION": 1,
                                                                  "VRAM": 2})
    smi.AmdSmiTemperatureMetric = IntEnum("AmdSmiTemperatureMetric", {"CURRENT": 0, "MAX": 1})
    smi.AmdSmiClkType = IntEnum("AmdSmiClkType", {"SYS": 0, "GFX": 0, "DF": 1, "DCEF": 2, "SOC": 3, "MEM": 4})

    class Handle:  # amdsmi_wrapper.amdsmi_processor_handle stand-in
        def __init__(self, index):
            self.index = index

    state = types.SimpleNamespace(handles=[Handle(i) for i in range(count)], init_error=None, unsupported=set(),
                                  calls=[], vram_used=[8192 * (i + 1) for i in range(count)])
    smi.state = state

    def check(name, handle=None):
        state.calls.append(name)
        if name in state.unsupported or (handle is not None and (name, handle.index) in state.unsupported):
            raise AmdSmiLibraryException(NOT_SUPPORTED)

    def amdsmi_init(flag=smi.AmdSmiInitFlags.INIT_AMD_GPUS):
        state.calls.append(("init", flag))
        if state.init_error is not None:
            raise AmdSmiLibraryException(state.init_error)

    def amdsmi_shut_down():
        state.calls.append("shut_down")

    def amdsmi_get_processor_handles():
        check("handles")
        return list(state.handles)

    def amdsmi_get_gpu_device_uuid(h):
        check("uuid", h)
        return f"{h.index:02x}ff74a1-0000-1000-80a5-6e5b0b5c0d{h.index:02x}"

    def amdsmi_get_gpu_asic_info(h):
        check("asic", h)
        return {"market_name": "AMD Instinct MI300X", "vendor_id": "0x1002", "vendor_name": "Advanced Micro Devices",
                "device_id": "0x74a1", "rev_id": "0x00", "asic_serial": f"0x9E06A0E1F8B6{h.index:04X}",
                "oam_id": h.index, "num_compute_units": 304, "target_graphics_version": "gfx942"}

    def amdsmi_get_gpu_board_info(h):
        check("board", h)
        return {"model_number": "102-G30211-00", "product_serial": "692251001124", "fru_id": "N/A",
                "product_name": "AMD Instinct MI300X OAM", "manufacturer_name": "AMD"}

    def amdsmi_get_gpu_driver_info(h):
        check("driver", h)
        return {"driver_name": "amdgpu", "driver_version": "6.8.5", "driver_date": "2015/01/01 00:00"}

    def amdsmi_get_gpu_vram_usage(h):
        check("vram", h)
        return {"vram_total": 196592, "vram_used": state.vram_used[h.index]}

    def amdsmi_get_gpu_activity(h):
        check("activity", h)
        return {"gfx_activity": 97, "umc_activity": 41, "mm_activity": "N/A"}

    def amdsmi_get_temp_metric(h, sensor, metric):
        check(f"temp-{sensor.name.lower()}", h)
        if sensor == smi.AmdSmiTemperatureType.EDGE:  # MI300X has no edge sensor
            raise AmdSmiLibraryException(NOT_SUPPORTED)
        return 61

    def amdsmi_get_power_info(h):
        check("power", h)
        return {"current_socket_power": 612, "average_socket_power": "N/A", "gfx_voltage": "N/A",
                "soc_voltage": "N/A", "mem_voltage": "N/A", "power_limit": 750000000}

    def amdsmi_get_power_cap_info(h):
        check("power_cap", h)
        return {"power_cap": 750000000, "default_power_cap": 750000000, "dpm_cap": 2100,
                "min_power_cap": 0, "max_power_cap": 750000000}

    def amdsmi_get_clock_info(h, clk):
        check(f"clock-{clk.name.lower()}", h)
        return {"clk": 2100 if clk == smi.AmdSmiClkType.GFX else 1300, "min_clk": 500, "max_clk": 2100,
                "clk_locked": "N/A", "clk_deep_sleep": "N/A"}

    def amdsmi_get_energy_count(h):
        check("energy", h)
        return {"energy_accumulator": 1_000_000, "counter_resolution": 15.259}

    def amdsmi_get_gpu_fan_speed(h, sensor):
        check("fan", h)
        raise AmdSmiLibraryException(NOT_SUPPORTED)  # passively cooled OAM

    def amdsmi_get_gpu_fan_speed_max(h, sensor):
        check("fan_max", h)
        return 255

    def amdsmi_get_gpu_total_ecc_count(h):
        check("ecc", h)
        return {"correctable_count": 3, "uncorrectable_count": 0, "deferred_count": 0}

    def amdsmi_get_xgmi_info(h):
        check("xgmi", h)
        return {"xgmi_lanes": 16, "xgmi_hive_id": 0x5A1B2C3D4E5F, "xgmi_node_id": h.index, "index": h.index}

    def amdsmi_get_gpu_process_list(h):
        check("processes", h)
        return [{"name": "python3", "pid": 4242, "mem": 64 * MIB,
                 "engine_usage": {"gfx": 0, "enc": 0}, "memory_usage": {"gtt_mem": 0, "cpu_mem": 0,
                                                                         "vram_mem": 64 * MIB}}]

    for name, value in list(locals().items()):
        if name.startswith("amdsmi_"):
            setattr(smi, name, value)
    return smi


def test_inventory_and_samples():
    smi = fake_amdsmi()
    collector = AmdCollector(smi)
    gpus, note = collector.inventory()
    assert note is None and [g.index for g in gpus] == [0, 1]
    gpu = gpus[0]
    assert gpu.name == "AMD Instinct MI300X" and gpu.uuid == "00ff74a1-0000-1000-80a5-6e5b0b5c0d00"
    assert gpu.memory_total_bytes == 196592 * MIB and gpu.driver_version == "6.8.5"
    assert gpu.interconnect == "xgmi hive 0x5a1b2c3d4e5f, 16 lanes" and gpu.cuda_version is None
    assert ("init", smi.AmdSmiInitFlags.INIT_AMD_GPUS) in smi.state.calls
    s = collector.sample()[1]
    assert (s.utilization_gpu, s.utilization_memory) == (97, 41)
    assert (s.memory_used_bytes, s.memory_total_bytes) == (16384 * MIB, 196592 * MIB)
    assert s.temperature_c == 61  # hotspot, after the edge sensor said NOT_SUPPORTED
    assert (s.power_w, s.power_limit_w) == (612, 750)
    assert (s.sm_clock_mhz, s.mem_clock_mhz) == (2100, 1300)
    assert s.energy_j == pytest.approx(15.259) and s.fan_percent is None
    assert (s.ecc_corrected, s.ecc_uncorrected) == (3, 0)
    assert [(p.pid, p.name, p.used_memory_bytes) for p in s.processes] == [(4242, "python3", 64 * MIB)]
    assert collector.host_overrides() == {"kind": "gpu_server"}
    collector.close()
    assert smi.state.calls[-1] == "shut_down"


def test_unsupported_calls_become_none():
    smi = fake_amdsmi(1)
    smi.state.unsupported |= {"activity", "power", "power_cap", "ecc", "xgmi", "energy", "uuid", "processes",
                              "temp-hotspot", "clock-mem", "driver", "asic"}
    collector = AmdCollector(smi)
    (gpu,), _ = collector.inventory()
    assert gpu.uuid == "AMD-0" and gpu.name == "AMD Instinct MI300X OAM"  # board info names it
    assert gpu.interconnect is None and gpu.driver_version is None
    (s,) = collector.sample()
    assert s.utilization_gpu is s.power_w is s.power_limit_w is s.ecc_corrected is s.energy_j is None
    assert s.temperature_c is None and s.mem_clock_mhz is None and s.sm_clock_mhz == 2100
    assert s.memory_used_bytes == 8192 * MIB and s.processes == []


def test_retry_and_timeout_errors_are_caught_like_the_rest():
    smi = fake_amdsmi(1)
    collector = AmdCollector(smi)
    collector.inventory()

    def busy(h):
        raise smi.AmdSmiRetryException()

    def slow(h):
        raise smi.AmdSmiTimeoutException()

    smi.amdsmi_get_gpu_activity, smi.amdsmi_get_gpu_vram_usage = busy, slow
    (s,) = collector.sample()
    assert s.utilization_gpu is None and s.memory_used_bytes is None and s.power_w == 612


def test_init_failure_is_a_note():
    smi = fake_amdsmi()
    smi.state.init_error = DRIVER_NOT_LOADED
    collector = AmdCollector(smi)
    gpus, note = collector.inventory()
    assert gpus == [] and "amdsmi failed to initialise" in note
    assert collector.sample() == [] and collector.host_overrides() == {}


def test_selection_picks_amd_when_nvml_sees_nothing(monkeypatch):
    smi = fake_amdsmi(8)
    monkeypatch.setitem(sys.modules, "amdsmi", smi)
    nvml_finds_none = lambda: (None, "NVML reports no NVIDIA GPUs", False)  # noqa: E731
    selection = select_collector({"nvml": nvml_finds_none, "amd": probe_amd, "jetson": probe_jetson})
    try:
        assert selection.used == "amd", selection.skipped
        assert "nvml" in selection.skipped and len(selection.collector.inventory()[0]) == 8
    finally:
        selection.collector.close()

"""Jetson collector: recorded ``tegrastats`` lines from several boards and JetPack releases, the
long-lived reader against a real process, jtop's attributes, and the simulated profile's field set."""

from __future__ import annotations

import os
import stat
import sys
import time
from types import SimpleNamespace

import pytest

from fleet.agent.collectors import jetson as jetson_module
from fleet.agent.collectors.jetson import (
    JETSON_FIELDS,
    Board,
    JetsonCollector,
    JtopSource,
    TegrastatsSource,
    cuda_version,
    fan_percent,
    reading_from_jtop,
)
from fleet.agent.collectors.simulated import SimulatedCollector
from fleet.agent.collectors.tegrastats import TegrastatsReader, parse_tegrastats

MIB = 1024 * 1024

# Recorded the way each board prints them (one line per interval).
NANO_JP4 = (
    "RAM 1711/3956MB (lfb 82x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [12%@1479,8%@1479,9%@1479,6%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 41%@921 APE 25 PLL@27C "
    "CPU@29.5C PMIC@100C GPU@27.5C AO@36C thermal@28.5C POM_5V_IN 2153/2153 POM_5V_GPU 440/402 "
    "POM_5V_CPU 361/361"
)
AGX_XAVIER_JP4 = (
    "RAM 3106/15820MB (lfb 1167x4MB) SWAP 0/7910MB (cached 0MB) CPU [5%@1190,2%@1190,1%@1190,1%@1190,"
    "off,off,off,off] EMC_FREQ 7%@2133 GR3D_FREQ 63%@1377 APE 150 MTS fg 0% bg 0% AO@40.5C GPU@41C "
    "Tdiode@43.25C PMIC@100C AUX@40C CPU@41.5C thermal@40.9C Tboard@40C GPU 2651/2215 CPU 311/311 "
    "SOC 1399/1399 CV 0/0 VDDRQ 155/155 SYS5V 1961/1961"
)
XAVIER_NX_JP5 = (
    "RAM 2448/6854MB (lfb 202x4MB) SWAP 0/3427MB (cached 0MB) CPU [1%@1190,0%@1190,0%@1190,0%@1190,"
    "off,off] EMC_FREQ 0%@1600 GR3D_FREQ 12%@[114] VIC_FREQ 115 APE 150 AUX@35.5C CPU@37C "
    "thermal@36.2C AO@35C GPU@35C PMIC@50C VDD_IN 3785mW/3785mW VDD_CPU_GPU_CV 472mW/472mW "
    "VDD_SOC 1142mW/1142mW"
)
AGX_ORIN_JP5 = (
    "RAM 2878/30536MB (lfb 6495x4MB) SWAP 0/15268MB (cached 0MB) CPU [2%@729,1%@729,0%@729,0%@729,"
    "0%@729,0%@729,0%@729,0%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] VIC_FREQ 115 "
    "APE 174 CV0@-256C CPU@44.312C Tboard@33C SOC2@40.437C Tdiode@34.75C SOC0@40.906C CV1@-256C "
    "GPU@-256C tj@44.312C SOC1@40.375C CV2@-256C VDD_GPU_SOC 2393mW/2393mW VDD_CPU_CV 399mW/399mW "
    "VIN_SYS_5V0 2520mW/2520mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"
)
ORIN_NANO_JP6 = (
    "11-30-2026 05:12:33 RAM 2451/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@1510,0%@1510,"
    "0%@1510,0%@1510,0%@729,0%@729] GR3D_FREQ 87% cpu@48.25C soc2@47.5C soc0@47.968C gpu@48.093C "
    "tj@48.25C soc1@47.687C VDD_IN 4915mW/4915mW VDD_CPU_GPU_CV 595mW/595mW VDD_SOC 1510mW/1510mW"
)


@pytest.mark.parametrize("line, expected", [
    (NANO_JP4, dict(ram=(1711, 3956), load=41, mhz=921, emc=(3, 1600), temp=27.5, gpu_w=0.44, board_w=2.153)),
    (AGX_XAVIER_JP4, dict(ram=(3106, 15820), load=63, mhz=1377, emc=(7, 2133), temp=41.0, gpu_w=2.651,
                          board_w=1.961)),
    (XAVIER_NX_JP5, dict(ram=(2448, 6854), load=12, mhz=114, emc=(0, 1600), temp=35.0, gpu_w=0.472,
                         board_w=3.785)),
    # GPU power-gated: its sensor reads -256C, so the junction (tj) stands in; two GPCs: the higher clock
    (AGX_ORIN_JP5, dict(ram=(2878, 30536), load=0, mhz=305, emc=(0, 2133), temp=44.312, gpu_w=2.393,
                        board_w=2.52)),
    # JetPack 6 without root: no EMC, no GPU clock
    (ORIN_NANO_JP6, dict(ram=(2451, 7620), load=87, mhz=None, emc=(None, None), temp=48.093, gpu_w=0.595,
                         board_w=4.915)),
], ids=["nano-jp4", "agx-xavier-jp4", "xavier-nx-jp5", "agx-orin-jp5", "orin-nano-jp6"])
def test_recorded_lines(line, expected):
    r = parse_tegrastats(line)
    assert (r.ram_used_bytes // MIB, r.ram_total_bytes // MIB) == expected["ram"]
    assert r.gpu_load == expected["load"] and r.gpu_mhz == expected["mhz"]
    assert (r.emc_load, r.emc_mhz) == expected["emc"]
    assert r.gpu_temperature == pytest.approx(expected["temp"])
    assert r.gpu_power_w == pytest.approx(expected["gpu_w"])
    assert r.board_power_w == pytest.approx(expected["board_w"])


def test_sensors_that_are_off_are_left_out():
    r = parse_tegrastats(AGX_ORIN_JP5)
    assert "gpu" not in r.temperatures and "cv0" not in r.temperatures
    assert r.temperatures["tboard"] == 33.0 and r.rails_mw["VDDQ_VDD2_1V8AO"] == 301
    assert "RAM" not in r.rails_mw and "SWAP" not in r.rails_mw


@pytest.mark.parametrize("line", [
    "", "garbage", "RAM 900/3956MB (lfb 82x4MB)", "GR3D_FREQ 5%@", "CPU [off,off] GPU@-256C",
    NANO_JP4[: len(NANO_JP4) // 2],
])
def test_lines_with_fields_missing_give_none_not_errors(line):
    r = parse_tegrastats(line)
    sample = JetsonCollector(source=FakeSource(r), board=Board(model="x"), fan_patterns=()).sample(now=1.0)[0]
    assert sample.temperature_c is None and sample.power_w is None and sample.energy_j is None


def test_truncated_line_keeps_what_it_has():
    r = parse_tegrastats("RAM 900/3956MB (lfb 82x4MB) SWAP 0/1978MB CPU [12%@1479] EMC_FREQ 3%@1600")
    assert r.ram_used_bytes == 900 * MIB and r.emc_load == 3 and r.gpu_load is None and r.gpu_mhz is None


class FakeSource:
    name = "fake"
    error = None

    def __init__(self, *readings):
        self.readings = list(readings)
        self.closed = False

    def reading(self, wait: float = 0.0):
        return self.readings.pop(0) if len(self.readings) > 1 else (self.readings or [None])[0]

    def close(self):
        self.closed = True


def fake_board(tmp_path) -> Board:
    tree = tmp_path / "device-tree"
    tree.mkdir(exist_ok=True)
    (tree / "model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    (tree / "serial-number").write_bytes(b"1421022123456\x00")
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    cuda = tmp_path / "cuda"
    cuda.mkdir(exist_ok=True)
    (cuda / "version.json").write_text('{"cuda": {"name": "CUDA SDK", "version": "11.4.315"}}')
    return Board.read(device_tree=tree, tegra_release=release, cuda_home=cuda)


def test_board_facts(tmp_path):
    board = fake_board(tmp_path)
    assert board.model == "NVIDIA Jetson AGX Orin Developer Kit" and board.l4t == "35.4.1"
    assert board.cuda == "11.4" and board.is_jetson
    assert board.gpu_uuid() == fake_board(tmp_path).gpu_uuid() and board.gpu_uuid().startswith("JETSON-")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "version.txt").write_text("CUDA Version 10.2.89\n")
    assert cuda_version(tmp_path / "old") == "10.2" and cuda_version(tmp_path / "none") is None
    assert not Board.read(device_tree=tmp_path / "x", tegra_release=tmp_path / "y").is_jetson


def fan_file(tmp_path, duty: str) -> tuple[str, ...]:
    hwmon = tmp_path / "pwm-fan" / "hwmon" / "hwmon3"
    hwmon.mkdir(parents=True)
    (hwmon / "pwm1").write_text(duty)
    return (str(tmp_path / "pwm-fan" / "hwmon" / "hwmon*" / "pwm1"),)


def test_collector_inventory_and_samples(tmp_path):
    board = fake_board(tmp_path)
    source = FakeSource(parse_tegrastats(AGX_ORIN_JP5), parse_tegrastats(AGX_ORIN_JP5.replace(
        "GR3D_FREQ 0%@[305,305]", "GR3D_FREQ 99%@[1301,1301]").replace("VDD_GPU_SOC 2393mW", "VDD_GPU_SOC 20000mW")))
    collector = JetsonCollector(source=source, board=board, fan_patterns=fan_file(tmp_path, "128"))
    (gpu,), note = collector.inventory()
    assert note is None and gpu.name == "NVIDIA Jetson AGX Orin Developer Kit"
    assert gpu.memory_total_bytes == 30536 * MIB and gpu.driver_version == "L4T 35.4.1"
    assert gpu.cuda_version == "11.4" and gpu.mig_mode is None
    first = collector.sample(now=100.0)[0]
    second = collector.sample(now=102.0)[0]
    assert first.uuid == gpu.uuid and first.energy_j == 0
    assert (second.utilization_gpu, second.sm_clock_mhz, second.power_w) == (99, 1301, 20.0)
    assert second.energy_j == pytest.approx(40.0)  # 20 W for 2 s
    assert second.fan_percent == pytest.approx(50.2)
    assert collector.host_overrides() == {"kind": "edge_device"}
    collector.close()
    assert source.closed


def test_simulated_jetson_reports_the_real_collectors_fields(tmp_path):
    """The demo's jetson-orin nodes show what a real Orin shows: no more, no less."""
    board = fake_board(tmp_path)
    real = JetsonCollector(source=FakeSource(parse_tegrastats(ORIN_NANO_JP6.replace(
        "GR3D_FREQ 87%", "EMC_FREQ 5%@3199 GR3D_FREQ 87%@[1020]"))), board=board,
        fan_patterns=fan_file(tmp_path, "77"))
    real.sample(now=1.0)
    real_fields = set(real.sample(now=2.0)[0].model_dump(exclude_none=True, exclude_defaults=True))
    simulated = SimulatedCollector("jetson-orin", "edge-1")
    for t in range(1_800_000_000, 1_800_000_000 + 3600, 300):  # idle and loaded moments alike
        sim_fields = set(simulated.sample(float(t))[0].model_dump(exclude_none=True, exclude_defaults=True))
        assert sim_fields == real_fields
    assert real_fields - {"index", "uuid"} == JETSON_FIELDS


def test_fan_percent_reads_pwm_duty(tmp_path):
    assert fan_percent(fan_file(tmp_path, "255")) == 100.0
    assert fan_percent((str(tmp_path / "nothing"),)) is None


def test_jtop_attributes_become_a_reading():
    jetson = SimpleNamespace(
        gpu={"gpu": {"type": "integrated", "status": {"load": 55.5, "railgate": False},
                     "freq": {"governor": "nvhost_podgov", "cur": 918000, "max": 1301000, "min": 306000}}},
        memory={"RAM": {"tot": 31260000, "used": 4200000, "free": 1}, "EMC": {"cur": 3199000, "val": 9,
                                                                                 "online": True}},
        temperature={"cpu": {"temp": 47.1, "online": True}, "gpu": {"temp": 46.0, "online": True},
                     "cv0": {"temp": -256, "online": False}},
        power={"rail": {"VDD_GPU_SOC": {"power": 6120, "avg": 5000, "online": True}},
               "tot": {"power": 12000, "name": "VDD_IN"}},
        fan={"pwmfan": {"speed": [34.5], "rpm": [2100]}},
    )
    r = reading_from_jtop(jetson)
    assert (r.gpu_load, r.gpu_mhz, r.emc_load, r.emc_mhz) == (55.5, 918, 9, 3199)
    assert r.ram_total_bytes == 31260000 * 1024 and r.gpu_temperature == 46.0 and "cv0" not in r.temperatures
    assert r.gpu_power_w == pytest.approx(6.12) and r.fan_percent == 34.5
    assert reading_from_jtop(SimpleNamespace()).gpu_load is None  # an older jtop without these attributes


def fake_tegrastats(tmp_path, lines: list[str]) -> str:
    script = tmp_path / "tegrastats"
    body = "\n".join(f"print({line!r}, flush=True); time.sleep(0.05)" for line in lines)
    script.write_text(f"#!{sys.executable}\nimport time\n{body}\ntime.sleep(30)\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_reader_runs_one_process_and_keeps_the_latest_line(tmp_path):
    reader = TegrastatsReader(command=[fake_tegrastats(tmp_path, [NANO_JP4, XAVIER_NX_JP5])])
    source = TegrastatsSource(reader)
    try:
        assert source.reading(wait=10) is not None
        deadline = time.monotonic() + 10
        while reader.latest() != XAVIER_NX_JP5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert source.reading().gpu_mhz == 114
        pid = reader._process.pid
        assert reader.latest() and reader._process.pid == pid  # not restarted while it runs
    finally:
        source.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_reader_reports_a_missing_binary(tmp_path):
    reader = TegrastatsReader(command=[str(tmp_path / "no-tegrastats")])
    assert reader.wait_first(1) is None and "cannot run" in reader.error
    collector = JetsonCollector(source=TegrastatsSource(reader), board=Board(model="NVIDIA Jetson Nano"),
                                first_wait=0.1)
    (gpu,), note = collector.inventory()
    assert gpu.name == "NVIDIA Jetson Nano" and "cannot run" in note
    assert collector.sample() == []


def test_jtop_that_cannot_start_falls_back_to_tegrastats(tmp_path, monkeypatch):
    class DeadJtop:
        def start(self):
            raise ConnectionRefusedError("jtop.service is not running")

        def close(self):
            pass

    script = fake_tegrastats(tmp_path, [AGX_ORIN_JP5])
    monkeypatch.setattr(jetson_module, "tegrastats_path", lambda: script)
    monkeypatch.setattr(jetson_module, "TegrastatsSource",
                        lambda: TegrastatsSource(TegrastatsReader(command=[script])))
    collector = JetsonCollector(source=JtopSource(factory=DeadJtop), board=Board(model="NVIDIA Jetson AGX Orin"))
    try:
        (gpu,), note = collector.inventory()
        assert note is None and isinstance(collector.source, TegrastatsSource)
        assert gpu.memory_total_bytes == 30536 * MIB and collector.sample()[0].sm_clock_mhz == 305
    finally:
        collector.close()


def test_a_stale_line_is_not_current(tmp_path):
    reader = TegrastatsReader(command=[fake_tegrastats(tmp_path, [NANO_JP4])], stale_after=0.3, interval_ms=100)
    try:
        assert reader.wait_first(10) == NANO_JP4
        time.sleep(0.5)  # the fake prints once, then stalls
        assert reader.latest() is None
    finally:
        reader.close()

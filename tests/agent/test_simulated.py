from __future__ import annotations

import pytest

from fleet.agent.collectors import Collector, make_collector
from fleet.agent.collectors.simulated import PROFILES, SimulatedCollector
from fleet.agent.protocol import Metrics, dump, parse_agent_frame

T = 1_750_000_000.0


@pytest.mark.parametrize(("profile", "count"), [("h100x8", 8), ("a100x4", 4), ("l40sx4", 4),
                                                ("jetson-orin", 1), ("cpu-only", 0)])
def test_profile_counts(profile, count):
    collector = make_collector(profile, seed="node-1")
    gpus, note = collector.inventory()
    assert len(gpus) == count
    assert len(collector.sample(T)) == count
    if count == 0:
        assert note and "no GPUs" in note
    else:
        assert note is None
        assert len({g.uuid for g in gpus}) == count


def test_h100_profile_facts():
    gpus, _ = make_collector("h100x8", seed="n").inventory()
    assert {g.name for g in gpus} == {"NVIDIA H100 80GB HBM3"}
    assert gpus[0].memory_total_bytes == 81559 * 1024 * 1024
    assert (gpus[0].driver_version, gpus[0].cuda_version) == ("550.54.15", "12.4")
    assert all(g.uuid.startswith("GPU-") for g in gpus)


def test_same_seed_same_uuids_and_values():
    a, b = SimulatedCollector("h100x8", "node-7"), SimulatedCollector("h100x8", "node-7")
    assert a.inventory() == b.inventory()
    for t in (T, T + 1.5, T + 3600):
        assert a.sample(t) == b.sample(t)


def test_different_seed_or_profile_gives_different_uuids():
    base = {g.uuid for g in SimulatedCollector("a100x4", "node-1").inventory()[0]}
    assert base.isdisjoint(g.uuid for g in SimulatedCollector("a100x4", "node-2").inventory()[0])
    assert base.isdisjoint(g.uuid for g in SimulatedCollector("h100x8", "node-1").inventory()[0])


def test_values_move_over_time_and_stay_valid():
    collector = SimulatedCollector("h100x8", "busy-node")
    seen = set()
    energy = []
    for step in range(0, 600, 7):
        samples = collector.sample(T + step)
        # must fit the wire format at every instant
        parse_agent_frame(dump(Metrics(type="metrics", ts=T + step, gpus=samples)))
        seen.add(tuple(s.utilization_gpu for s in samples))
        energy.append(samples[0].energy_j)
        for s in samples:
            assert 0 <= s.utilization_gpu <= 100
            assert 0 < s.power_w <= s.power_limit_w
            assert s.memory_used_bytes <= s.memory_total_bytes
    assert len(seen) > 10
    assert energy == sorted(energy)


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        make_collector("h200x16", seed="n")
    for name in PROFILES:
        assert name in str(info.value)


def test_jetson_host_overrides():
    collector = make_collector("jetson-orin", seed="edge-1")
    assert collector.host_overrides() == {"arch": "aarch64", "kind": "edge_device",
                                          "hostname": "edge-1.sim.fleet.local"}
    (gpu,), _ = collector.inventory()
    assert gpu.name == "Orin (nvgpu)"
    assert 28 * 2**30 < gpu.memory_total_bytes < 32 * 2**30
    assert make_collector("cpu-only", seed="x").host_overrides() == {"kind": "cpu_node",
                                                                     "hostname": "x.sim.fleet.local"}


def test_simulated_nodes_have_distinct_hostnames():
    seeds = ("gpu-01", "gpu-02", "GPU 03")
    names = {make_collector("h100x8", seed=seed).host_overrides()["hostname"] for seed in seeds}
    assert names == {"gpu-01.sim.fleet.local", "gpu-02.sim.fleet.local", "gpu-03.sim.fleet.local"}


def test_injected_lost_gpu():
    collector = SimulatedCollector("a100x4", "n")
    collector.lose(2)
    gpus, note = collector.inventory()
    assert [g.index for g in gpus] == [0, 1, 3] and note == "GPU 2 is lost"
    assert [s.index for s in collector.sample(T) if s.lost] == [2]


def test_make_collector_without_simulation_selects_a_real_one():
    collector = make_collector(None, seed="n")  # NVML, AMD, Jetson or host-only: whichever works here
    try:
        assert isinstance(collector, Collector)
        assert not isinstance(collector, SimulatedCollector)
    finally:
        collector.close()

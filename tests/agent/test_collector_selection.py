"""Which collector the agent uses on its host, why it skipped the others, and the node kind it claims."""

from __future__ import annotations

import pytest

from fleet.agent import cli
from fleet.agent.collectors import HostOnlyCollector, Selection, make_selection, probe_nvml, select_collector
from fleet.agent.collectors.simulated import SimulatedCollector
from fleet.agent.state import Credentials, save_credentials, write_status


def absent(why):
    return lambda: (None, why, False)


def test_cpu_only_host_is_a_cpu_node():
    selection = select_collector({"nvml": absent("nvidia-ml-py not installed"), "amd": absent("no amdsmi"),
                                  "jetson": absent("not a Jetson")})
    assert selection.used == "none" and isinstance(selection.collector, HostOnlyCollector)
    assert selection.skipped == {"nvml": "nvidia-ml-py not installed", "amd": "no amdsmi", "jetson": "not a Jetson"}
    assert selection.collector.host_overrides() == {"kind": "cpu_node"}
    gpus, note = selection.collector.inventory()
    assert gpus == [] and "nvml: nvidia-ml-py not installed" in note and selection.collector.sample() == []


def test_a_failing_driver_does_not_make_a_cpu_node():
    selection = select_collector({"nvml": lambda: (None, "NVIDIA driver not loaded", True),
                                  "amd": absent("no amdsmi")})
    assert selection.used == "none" and selection.collector.host_overrides() == {}


def test_first_working_collector_wins_and_a_broken_probe_is_skipped():
    sim = SimulatedCollector("a100x4", "n")

    def broken():
        raise RuntimeError("boom")

    selection = select_collector({"nvml": broken, "amd": lambda: (sim, "", False), "jetson": absent("x")})
    assert selection.used == "amd" and selection.collector is sim
    assert selection.skipped == {"nvml": "probe failed: boom"}
    assert selection.report() == {"used": "amd", "skipped": {"nvml": "probe failed: boom"}}


def test_real_nvml_probe_here_says_why():
    collector, why, _ = probe_nvml()  # this machine has no NVIDIA GPU (skip where it has one)
    if collector is not None:
        collector.close()
        pytest.skip("an NVIDIA GPU is present")
    assert why


def test_simulation_and_faults():
    assert make_selection("cpu-only", "x").collector.host_overrides() == {"kind": "cpu_node",
                                                                          "hostname": "x.sim.fleet.local"}
    assert make_selection("h100x8", "x").used == "simulated:h100x8"
    with pytest.raises(ValueError, match="--fault needs --simulate"):
        make_selection(None, "x", faults=["ecc"])


def test_status_says_which_collector_runs(tmp_path, capsys):
    save_credentials(Credentials(server="https://fleet.example", node_id=3, node_name="edge-3", secret="s"),
                     tmp_path)
    write_status(tmp_path, connected=False, last_error=None,
                 collector={"used": "none", "skipped": {"nvml": "nvidia-ml-py not installed",
                                                        "jetson": "not a Jetson"}})
    assert cli.main(["status", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "collector:  none" in out
    assert "skipped:    nvml: nvidia-ml-py not installed" in out and "skipped:    jetson: not a Jetson" in out


def test_enroll_sends_the_detected_kind(monkeypatch, tmp_path):
    sent = {}

    def fake_enroll(server, token, *, name, kind, labels):
        sent["kind"] = kind
        return Credentials(server=server, node_id=1, node_name="n", secret="s")

    monkeypatch.setattr(cli, "enroll", fake_enroll)
    monkeypatch.setattr(cli, "select_collector", lambda: Selection(HostOnlyCollector("none"), "none"))
    assert cli.main(["enroll", "--home", str(tmp_path), "--server", "https://f.example", "--token", "t"]) == 0
    assert sent["kind"] == "cpu_node"
    assert cli.main(["enroll", "--home", str(tmp_path / "b"), "--server", "https://f.example", "--token", "t",
                     "--kind", "edge_device"]) == 0
    assert sent["kind"] == "edge_device"

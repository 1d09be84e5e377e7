from __future__ import annotations

import os
import stat

import pytest

from fleet.agent import hostfacts
from fleet.agent.state import (
    Credentials,
    NotEnrolledError,
    StateError,
    agent_home,
    load_credentials,
    save_credentials,
    write_json_atomic,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_home_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("FLEET_AGENT_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert agent_home() == tmp_path / ".fleet-agent"
    monkeypatch.setenv("FLEET_AGENT_HOME", str(tmp_path / "h"))
    assert agent_home() == tmp_path / "h"
    assert agent_home(tmp_path / "x") == tmp_path / "x"


def test_credentials_round_trip_and_modes(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    creds = Credentials("https://fleet", 3, "n3", "secret-value")
    path = save_credentials(creds, home)
    assert mode(home) == 0o700 and mode(path) == 0o600
    assert load_credentials(home) == creds
    assert "secret-value" not in repr(creds)


def test_atomic_write_keeps_mode_even_over_a_leftover_tmp(tmp_path):
    target = tmp_path / "credentials.json"
    leftover = tmp_path / f".credentials.json.{os.getpid()}.tmp"
    leftover.write_text("junk")
    os.chmod(leftover, 0o644)
    write_json_atomic(target, {"secret": "s"})
    assert mode(target) == 0o600
    assert not leftover.exists()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(NotEnrolledError, match="not enrolled: run fleet-agent enroll --server URL --token T"):
        load_credentials(tmp_path)
    (tmp_path / "credentials.json").write_text("{broken")
    with pytest.raises(StateError, match="re-enroll"):
        load_credentials(tmp_path)
    (tmp_path / "credentials.json").write_text('{"server": "http://x", "node_id": 1}')
    with pytest.raises(StateError, match="incomplete"):
        load_credentials(tmp_path)


def test_os_name_and_kind(tmp_path):
    release = tmp_path / "os-release"
    release.write_text('NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n')
    assert hostfacts.os_name(release) == "Ubuntu 22.04.4 LTS"
    assert hostfacts.os_name(tmp_path / "missing")  # falls back to platform.platform()
    assert hostfacts.detect_kind(tmp_path / "nv_tegra_release") is None
    (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 3.0\n")
    assert hostfacts.detect_kind(tmp_path / "nv_tegra_release") == "edge_device"


def test_collect_host_facts(tmp_path):
    facts = hostfacts.collect_host_facts(kind="gpu_server", labels={"a": "b"}, home=tmp_path)
    assert facts.hostname and facts.arch and facts.cpu_count >= 1
    assert facts.memory_bytes > 0 and facts.disk_bytes > 0
    assert facts.kind == "gpu_server" and facts.labels == {"a": "b"}
    assert hostfacts.collect_host_facts(home=tmp_path / "missing").disk_bytes > 0

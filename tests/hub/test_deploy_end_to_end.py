"""Real Daphne, real fleet-agent processes, the fake upstream: deploy through the mirror with pull-through
(one upstream fetch per blob for two agents), activation, resume of only the missing ranges after a killed
agent, a corrupt blob
caught by verification and never activated, a full disk refused before downloading."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.hub.conftest import sample_files
from tests.hub.fakehub import FakeHub
from tests.integration.harness import Agent, Stack, wait_until

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
SERVED = {"config.json", "tokenizer.json", "model.safetensors"}


@pytest.fixture
def upstream():
    hub = FakeHub().start()
    yield hub
    hub.stop()


@pytest.fixture
def stack(tmp_path, upstream):
    stack = Stack(tmp_path, offline_after=3, engine=True)
    stack.env.update({"FLEET_HF_UPSTREAM": upstream.url, "FLEET_HUB_INLINE_MAX": "65536",
                      "FLEET_HUB_DISK_MARGIN": "0", "FLEET_HUB_STALL_TIMEOUT": "20",
                      "FLEET_HUB_RATE_LIMIT": "4M",  # per connection: slow enough to kill an agent mid-way
                      # the agents' fast path for files over 4 MiB, in 1 MiB ranges, two at a time
                      "FLEET_AGENT_PULL_MIN": "4M", "FLEET_AGENT_PULL_CHUNK": "1M", "FLEET_AGENT_PULL_RANGES": "2"})
    stack.start()
    yield stack
    stack.stop()


def command_state(stack: Stack, command_id: str) -> tuple[str, str]:
    rows = stack.query("SELECT state, error FROM hub_nodecommand WHERE command_id = ?", (command_id,))
    return rows[0] if rows else ("", "")


def wait_state(stack: Stack, command_id: str, states: set[str], agents: list[Agent], timeout: float = 60) -> str:
    def done():
        state, _ = command_state(stack, command_id)
        return state if state in states | {"failed"} else None

    try:
        state = wait_until(done, timeout, f"command {command_id} to reach {states}")
    except AssertionError:
        logs = "\n".join(agent.log() for agent in agents)
        raise AssertionError(f"{command_state(stack, command_id)}\nagents:\n{logs}\nserver:\n{stack.logs()}") from None
    return state


def wait_stored(stack: Stack) -> None:
    wait_until(lambda: stack.query("SELECT count(*) FROM hub_blob WHERE state != 'present'") == [(0,)], 60,
               "the engine to store every blob")


def snapshot_files(home: Path, repo: str, sha: str) -> dict[str, bytes]:
    root = home / "models" / ("models--" + repo.replace("/", "--")) / "snapshots" / sha
    return {p.name: p.read_bytes() for p in root.iterdir()}


def enroll(stack: Stack, tmp_path: Path, name: str, token: str, **env: str) -> Agent:
    agent = Agent(tmp_path / name, {**stack.env, **env})
    result = agent.cli("enroll", "--server", stack.url(), "--token", token, "--name", name)
    assert result.returncode == 0, result.stderr
    return agent


def test_deploy_activate_resume_verify_and_refuse(stack, upstream, tmp_path) -> None:
    files_v1 = sample_files(weights_mib=6, seed=b"1")
    upstream.add("acme/tiny", files_v1, revision="main")
    upstream.delay_per_mb = 0.15  # both agents arrive while the weights are still coming from upstream
    sha_v1 = stack.manage("addmodel", "acme/tiny", "--revision", "main").splitlines()[-1]
    token = stack.manage("createenrollmenttoken", "--expires", "10m", "--uses", "3")
    a = enroll(stack, tmp_path, "node-a", token)
    b = enroll(stack, tmp_path, "node-b", token)
    agents = [node.run("--simulate", "jetson-orin", "--runtime", "none") for node in (a, b)]
    try:
        wait_until(lambda: stack.node_status("node-a") == stack.node_status("node-b") == "online", 60, "agents")
        # 1. two nodes deploy the same unsynced version at once: one upstream fetch per blob
        cmd_a = stack.manage("deploymodel", "deploy", "--node", "node-a", "--repo", "acme/tiny", "--revision", "main",
                             "--activate")
        cmd_b = stack.manage("deploymodel", "deploy", "--node", "node-b", "--repo", "acme/tiny", "--revision", "main")
        assert wait_state(stack, cmd_a, {"active"}, agents) == "active"
        assert wait_state(stack, cmd_b, {"staged"}, agents) == "staged"
        assert dict(upstream.fetches) == {("acme/tiny", name): 1 for name in SERVED}
        expected = {k: v for k, v in files_v1.items() if k in SERVED}
        assert snapshot_files(a.home, "acme/tiny", sha_v1) == snapshot_files(b.home, "acme/tiny", sha_v1) == expected
        assert Path(os.readlink(a.home / "models" / "active" / "acme--tiny")).name == sha_v1
        assert f"model:      acme/tiny@{sha_v1[:12]} (active)" in a.cli("status").stdout
        installs = stack.query("SELECT n.name, i.state FROM hub_nodeinstall i JOIN inventory_node n ON n.id = "
                               "i.node_id WHERE i.sha = ? ORDER BY n.name", (sha_v1,))
        assert installs == [("node-a", "active"), ("node-b", "staged")]
        progress = stack.query("SELECT bytes_done, bytes_total FROM hub_nodecommand WHERE command_id = ?", (cmd_b,))
        assert progress == [(sum(len(expected[n]) for n in SERVED),) * 2]

        # 2. a killed agent resumes its download on restart (Range from where it stopped)
        files_v2 = sample_files(weights_mib=12, seed=b"2")
        upstream.add("acme/tiny", files_v2, revision="v2")
        upstream.delay_per_mb = 0.0
        sha_v2 = stack.manage("addmodel", "acme/tiny", "--revision", "v2").splitlines()[-1]
        wait_stored(stack)  # the engine's hub sync stores v2 before any node asks
        cmd = stack.manage("deploymodel", "deploy", "--node", "node-b", "--repo", "acme/tiny", "--revision", "v2")
        blobs = b.home / "models" / "models--acme--tiny" / "blobs"

        def ranges_done() -> list[int]:
            for sidecar in blobs.glob("*.fleet-ranges"):
                try:
                    return json.loads(sidecar.read_text())["done"]
                except (OSError, ValueError):
                    return []
            return []

        wait_until(lambda: len(ranges_done()) >= 2, 90, "node-b to write some ranges of v2")
        b.kill()
        done = ranges_done()
        b.run("--simulate", "jetson-orin", "--runtime", "none")
        assert wait_state(stack, cmd, {"staged"}, agents) == "staged"
        assert snapshot_files(b.home, "acme/tiny", sha_v2) == {k: v for k, v in files_v2.items() if k in SERVED}
        import hashlib

        digest = hashlib.sha256(files_v2["model.safetensors"]).hexdigest()

        def sent_ranges() -> list[int]:
            logs = "".join(path.read_text() for path in tmp_path.glob("daphne-*.log"))
            return [int(m) // MIB for m in re.findall(rf"blob {digest[:12]} range=(\d+)-\d+ sent=", logs)]

        # the blob server logs a range once it is sent: the agent may have it (and be staged) first
        wait_until(lambda: set(sent_ranges()) >= set(range(12)), 30, "the server's log line of every range")
        sent = sent_ranges()
        # the ranges written before the kill were sent once: the restart fetched only the missing ones
        assert all(sent.count(i) == 1 for i in done) and set(sent) == set(range(12)), (done, sent)

        # 3. a corrupt blob (same size, wrong bytes) is caught by verification and never activated
        files_v3 = sample_files(weights_mib=2, seed=b"3")
        upstream.add("acme/tiny", files_v3, revision="v3")
        sha_v3 = stack.manage("addmodel", "acme/tiny", "--revision", "v3").splitlines()[-1]
        wait_stored(stack)
        digest = hashlib.sha256(files_v3["model.safetensors"]).hexdigest()
        stored = tmp_path / "var" / "hub" / "blobs" / "sha256" / digest[:2] / digest
        stored.write_bytes(bytes(stored.stat().st_size))
        cmd = stack.manage("deploymodel", "deploy", "--node", "node-a", "--repo", "acme/tiny", "--revision", "v3",
                           "--activate")
        assert wait_state(stack, cmd, {"active"}, agents) == "failed"
        assert "verification failed" in command_state(stack, cmd)[1]
        assert "model.safetensors sha256 mismatch" in command_state(stack, cmd)[1]
        assert Path(os.readlink(a.home / "models" / "active" / "acme--tiny")).name == sha_v1
        assert stack.query("SELECT state FROM hub_nodeinstall WHERE sha = ?", (sha_v3,)) == []

        # 4. a full disk is refused before any download, with a clear message
        b.kill()
        b.env["FLEET_AGENT_DISK_MARGIN"] = "1P"
        b.run("--simulate", "jetson-orin", "--runtime", "none")
        before = sum(upstream.fetches.values())
        cmd = stack.manage("deploymodel", "deploy", "--node", "node-b", "--repo", "acme/tiny", "--revision", "v3")
        assert wait_state(stack, cmd, {"staged"}, agents) == "failed"
        error = command_state(stack, cmd)[1]
        assert "not enough disk space" in error and "FLEET_AGENT_DISK_MARGIN" in error
        assert not (b.home / "models" / "models--acme--tiny" / "snapshots" / sha_v3).exists()
        assert sum(upstream.fetches.values()) == before
    finally:
        for agent in agents:
            agent.kill()

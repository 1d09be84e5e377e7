"""Real processes: one site cache and four agents of site plant-7 pull a version; the server sends each blob
once (its blob server's access log counts the bytes), every node verifies its checksums; with the cache
killed mid-download the nodes finish from the server; with no cache each node costs the WAN a full copy."""

from __future__ import annotations

import contextlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.harness import Agent, Stack, free_port, wait_until

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
NODES = ("n1", "n2", "n3", "n4")


def files(weights_mib: int, seed: str) -> dict[str, bytes]:
    return {"config.json": f'{{"model_type": "llama", "seed": "{seed}"}}'.encode(),
            "tokenizer.json": f'{{"version": "1.0", "seed": "{seed}"}}'.encode(),
            "model.safetensors": os.urandom(weights_mib * MIB)}


def sent_bytes(tmp_path: Path) -> int:
    """Bytes the server's blob server sent (every blob GET goes there: FLEET_HUB_INLINE_MAX=0)."""
    logs = "".join(path.read_text() for path in tmp_path.glob("daphne-*.log"))
    return sum(int(n) for n in re.findall(r"blob [0-9a-f]{12} range=\S+ sent=(\d+)", logs))


def import_version(stack: Stack, tmp_path: Path, name: str, content: dict[str, bytes]) -> str:
    folder = tmp_path / f"src-{name}"
    folder.mkdir()
    for path, data in content.items():
        (folder / path).write_bytes(data)
    return stack.manage("importmodel", str(folder), "--repo", "plant/tiny", "--revision", name).splitlines()[-1]


def snapshot(home: Path, sha: str) -> dict[str, bytes]:
    root = home / "models" / "models--plant--tiny" / "snapshots" / sha
    return {path.name: path.read_bytes() for path in root.iterdir()} if root.is_dir() else {}


def deploy_all(stack: Stack, sha: str) -> list[str]:
    return [stack.manage("deploymodel", "deploy", "--node", name, "--repo", "plant/tiny", "--revision", sha)
            for name in NODES]


def wait_staged(stack: Stack, commands: list[str], agents: list[Agent], timeout: float = 60) -> None:
    def states() -> list[str]:
        rows = stack.query(f"SELECT state FROM hub_nodecommand WHERE command_id IN ({','.join('?' * len(commands))})",
                           tuple(commands))
        return [row[0] for row in rows]

    try:
        wait_until(lambda: states() == ["staged"] * len(commands) or "failed" in states(), timeout, "staged")
    except AssertionError:
        pass
    if states() != ["staged"] * len(commands):
        logs = "\n".join(f"--- {agent.home.name}\n{agent.log()}" for agent in agents)
        raise AssertionError(f"{states()}\n{logs}\nserver:\n{stack.logs()}")


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path, offline_after=5)
    stack.env.update({"FLEET_HUB_INLINE_MAX": "0",  # every file through the blob server, whose log counts bytes
                      "FLEET_HUB_RATE_LIMIT": "2M",  # per connection: the cache's fetch takes seconds
                      "FLEET_AGENT_PULL_MIN": "1M", "FLEET_AGENT_PULL_CHUNK": "1M", "FLEET_AGENT_PULL_RANGES": "2"})
    stack.start()
    yield stack
    stack.stop()


def test_site_cache_pulls_once_per_site_and_nodes_fall_back(stack, tmp_path) -> None:
    v1 = files(8, "v1")
    sha1 = import_version(stack, tmp_path, "v1", v1)
    token = stack.manage("createenrollmenttoken", "--expires", "10m", "--uses", "5")
    agents: dict[str, Agent] = {}
    for name in ("cache", *NODES):
        agents[name] = Agent(tmp_path / name, stack.env)
        result = agents[name].cli("enroll", "--server", stack.url(), "--token", token, "--name", name,
                                  "--label", "site=plant-7")
        assert result.returncode == 0, result.stderr
    port = free_port()
    common = ("--simulate", "cpu-only", "--runtime", "none", "--label", "site=plant-7")
    cache = agents["cache"].run(*common, "--site-cache", f"127.0.0.1:{port}")
    try:
        wait_until(lambda: stack.query("SELECT url FROM inventory_sitecache WHERE site = 'plant-7'")
                   == [(f"http://127.0.0.1:{port}",)], 60, "the cache to register")
        for name in NODES:
            agents[name].run(*common)
        wait_until(lambda: all(stack.node_status(name) == "online" for name in NODES), 60, "the nodes")
        nodes = [agents[name] for name in NODES]

        # 1. four nodes pull v1 through the cache: each blob crosses the WAN once
        before = sent_bytes(tmp_path)
        wait_staged(stack, deploy_all(stack, sha1), [cache, *nodes])
        wan_with_cache = sent_bytes(tmp_path) - before
        assert wan_with_cache == sum(map(len, v1.values())), wan_with_cache
        for node in nodes:
            assert snapshot(node.home, sha1) == v1
            assert "through the site cache" in node.log()
        counters = ("SELECT bytes_upstream, bytes_served, misses + hits, disk_bytes FROM inventory_sitecache "
                    "WHERE bytes_served >= 4 * bytes_upstream AND bytes_upstream > 0")
        report = wait_until(lambda: stack.query(counters), 20, "a report of the cache's counters")
        upstream, served, requests, disk = report[0]
        assert upstream == sum(map(len, v1.values())) and requests > 0
        assert disk >= upstream

        # 2. the cache dies while it fetches v2: the nodes finish from the server, verified
        v2 = files(12, "v2")
        sha2 = import_version(stack, tmp_path, "v2", v2)
        blobs = agents["cache"].home / "site-cache" / "blobs"

        def partial_bytes() -> int:
            total = 0
            for path in blobs.glob("*.partial"):
                with contextlib.suppress(OSError):
                    total += path.stat().st_size
            return total

        before = sent_bytes(tmp_path)
        with ThreadPoolExecutor(1) as pool:  # deploymodel takes seconds each: watch the cache meanwhile
            deploying = pool.submit(deploy_all, stack, sha2)
            wait_until(lambda: partial_bytes() >= 3 * MIB, 60, "the cache to be part-way through v2")
            cache.kill()
            commands = deploying.result()
        wait_staged(stack, commands, nodes)
        for node in nodes:  # mid-download, or (deployed after the kill) at the start, or (deployed after the
            # server saw the cache offline and withdrew it: a slow run) straight from the server
            assert snapshot(node.home, sha2) == v2
            log = node.log()
            assert "pulling the rest from the server" in log or "unreachable" in log or "site cache: none" in log
        assert "pulling the rest from the server" in agents["n1"].log()  # its deploy came first
        wan_fallback = sent_bytes(tmp_path) - before
        assert sum(map(len, v2.values())) < wan_fallback <= 5 * sum(map(len, v2.values()))

        # 3. no cache (it is down): each node's pull crosses the WAN
        v3 = files(4, "v3")
        sha3 = import_version(stack, tmp_path, "v3", v3)
        before = sent_bytes(tmp_path)
        wait_staged(stack, deploy_all(stack, sha3), nodes)
        wan_without_cache = sent_bytes(tmp_path) - before
        assert wan_without_cache == 4 * sum(map(len, v3.values()))
        size2, size3 = sum(map(len, v2.values())), sum(map(len, v3.values()))
        print(f"WAN bytes per rollout to 4 nodes of one site: with the cache {wan_with_cache} (1.00x the model), "
              f"without {wan_without_cache} ({wan_without_cache / size3:.2f}x); cache killed mid-way: "
              f"{wan_fallback / size2:.2f}x")
    finally:
        for agent in agents.values():
            agent.kill()

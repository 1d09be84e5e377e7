"""The agent's deployer in-process against a live mirror: idempotent by command_id, activation switches the
pointer atomically and keeps N previous versions, removal refuses the active version, rollback, restart
a corrupt cached blob caught by verification, bad configuration refused (the fast path and its resume:
test_fast_pull.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from fleet.agent.deployer import Deployer
from fleet.agent.modelstore import ConfigError, DeployConfig
from fleet.agent.protocol import Activate, CommandEvent, Deploy, Remove, Rollback
from fleet.hub import commands
from fleet.hub.importer import import_folder
from fleet.hub.models import CommandKind
from tests.hub.conftest import sample_files, write_folder

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def mirror(live_server, hub_root, make_node, settings):
    settings.FLEET_HUB_INLINE_MAX = 64 * 1024
    node, secret = make_node("gpu-01")
    return live_server.url.replace("localhost", "127.0.0.1"), secret, node


def _version(tmp_path: Path, name: str, seed: bytes, weights_mib: int = 1):
    version, _ = import_folder("test", write_folder(tmp_path / name, sample_files(weights_mib, seed)), "acme/tiny",
                               name)
    return version


class Recorder:
    def __init__(self) -> None:
        self.events: list[CommandEvent] = []

    async def __call__(self, event: CommandEvent) -> None:
        self.events.append(event)

    def final(self, command_id: str) -> CommandEvent:
        return [e for e in self.events if e.command_id == command_id][-1]


async def _run(deployer: Deployer, frame, recorder: Recorder, timeout: float = 60) -> CommandEvent:
    await deployer.handle(frame)
    deadline = asyncio.get_running_loop().time() + timeout
    while frame.command_id in deployer.tasks:
        assert asyncio.get_running_loop().time() < deadline, recorder.events
        await asyncio.sleep(0.05)
    return recorder.final(frame.command_id)


def _deploy_frame(version, command_id: str, activate: bool = False) -> Deploy:
    return Deploy(type="deploy", command_id=command_id, repo="acme/tiny", sha=version.sha,
                  manifest=[f.manifest_entry() for f in version.files.all()], activate=activate)


def run(coro):
    return asyncio.run(coro)


def test_deploy_activate_keep_previous_rollback_remove(mirror, tmp_path) -> None:
    server, secret, _ = mirror
    versions = [_version(tmp_path, f"v{i}", bytes([97 + i])) for i in range(4)]
    frames = [_deploy_frame(v, f"d{i}", activate=True) for i, v in enumerate(versions)]
    home = tmp_path / "agent"

    async def scenario():
        recorder = Recorder()
        deployer = Deployer(home, secret, server, DeployConfig(keep=1, disk_margin=0))
        deployer.attach(recorder, server + "/hf")
        first = await _run(deployer, frames[0], recorder)
        assert first.state == "active" and first.bytes_done == first.bytes_total == versions[0].total_size
        states = [e.state for e in recorder.events if e.command_id == "d0"]
        assert states[0] == "downloading" and "verifying" in states and states[-2:] == ["activating", "active"]
        # the same command again: reported, not redone
        before = len(recorder.events)
        again = await _run(deployer, frames[0], recorder)
        assert again.state == "active" and len(recorder.events) == before + 1
        for frame in frames[1:]:
            assert (await _run(deployer, frame, recorder)).state == "active"
        store = deployer.store
        link = store.pointer("acme/tiny")
        assert Path(os.readlink(link)).name == versions[3].sha
        assert (link / "config.json").read_bytes() == sample_files(1, b"d")["config.json"]
        # keep=1: the active one and one previous stay, older ones were removed from disk
        assert {sha for _, sha in store.installed()} == {versions[3].sha, versions[2].sha}
        assert not store.snapshot("acme/tiny", versions[0].sha).exists()
        refused = await _run(deployer, Remove(type="remove", command_id="r1", repo="acme/tiny", sha=versions[3].sha),
                             recorder)
        assert refused.state == "failed" and "is the active version" in refused.error
        back = await _run(deployer, Rollback(type="rollback", command_id="rb", repo="acme/tiny"), recorder)
        assert back.state == "active" and Path(os.readlink(link)).name == versions[2].sha
        removed = await _run(deployer, Remove(type="remove", command_id="r2", repo="acme/tiny", sha=versions[3].sha),
                             recorder)
        assert removed.state == "removed" and not store.snapshot("acme/tiny", versions[3].sha).exists()
        assert (link / "config.json").exists()  # the active version's files survived the removal
        missing = await _run(deployer, Activate(type="activate", command_id="a9", repo="acme/tiny",
                                                sha=versions[0].sha), recorder)
        assert missing.state == "failed" and "is not staged on this node" in missing.error
        assert [ref.sha for ref in deployer.active()] == [versions[2].sha]

    run(scenario())


def test_corrupt_cached_blob_is_caught_and_deleted(mirror, tmp_path) -> None:
    server, secret, _ = mirror
    version = _version(tmp_path, "v1", b"a")
    home = tmp_path / "agent"
    d1, d2, d3 = (_deploy_frame(version, "d1"), _deploy_frame(version, "d2", activate=True),
                  _deploy_frame(version, "d3", activate=True))

    async def scenario():
        recorder = Recorder()
        deployer = Deployer(home, secret, server, DeployConfig(keep=2, disk_margin=0))
        deployer.attach(recorder, server + "/hf")
        assert (await _run(deployer, d1, recorder)).state == "staged"
        weights = deployer.store.snapshot("acme/tiny", version.sha) / "model.safetensors"
        blob = weights.resolve()
        blob.write_bytes(bytes(blob.stat().st_size))  # bit rot: same size, wrong bytes
        deployer.store.state["versions"].clear()  # forget it was staged, as if the deploy were fresh
        result = await _run(deployer, d2, recorder)
        assert result.state == "failed" and "model.safetensors sha256 mismatch" in result.error
        assert not blob.exists() and deployer.active() == []
        again = await _run(deployer, d3, recorder)
        assert again.state == "active"  # the bad file was deleted, so a new deploy fetched it again

    run(scenario())


def test_full_disk_is_refused_up_front(mirror, tmp_path) -> None:
    server, secret, _ = mirror
    version = _version(tmp_path, "v1", b"a")
    home = tmp_path / "agent"
    frame = _deploy_frame(version, "d1")

    async def scenario():
        recorder = Recorder()
        deployer = Deployer(home, secret, server, DeployConfig(keep=2, disk_margin=1024**5))
        deployer.attach(recorder, server + "/hf")
        result = await _run(deployer, frame, recorder)
        assert result.state == "failed"
        assert "not enough disk space" in result.error and "FLEET_AGENT_DISK_MARGIN" in result.error
        assert [e.state for e in recorder.events] == ["failed"]
        assert not (home / "models" / "models--acme--tiny").exists()

    run(scenario())


def test_a_revoked_node_gets_a_clear_failure(mirror, tmp_path) -> None:
    from fleet.inventory.models import NodeCredential

    server, secret, node = mirror
    version = _version(tmp_path, "v1", b"a")
    NodeCredential.objects.filter(node=node).update(revoked_at="2026-01-01T00:00:00Z")
    frame = _deploy_frame(version, "d1")

    async def scenario():
        recorder = Recorder()
        deployer = Deployer(tmp_path / "agent", secret, server, DeployConfig(keep=2, disk_margin=0))
        deployer.attach(recorder, server + "/hf")
        result = await _run(deployer, frame, recorder)
        assert result.state == "failed" and "refused this node's secret" in result.error

    run(scenario())


@pytest.mark.parametrize(("env", "words"), [
    ({"FLEET_AGENT_KEEP_VERSIONS": "many"}, "FLEET_AGENT_KEEP_VERSIONS='many' must be a whole number"),
    ({"FLEET_AGENT_DISK_MARGIN": "lots"}, "FLEET_AGENT_DISK_MARGIN='lots' must be a size"),
    ({"FLEET_AGENT_PULL_RANGES": "100"}, "FLEET_AGENT_PULL_RANGES='100' must be a whole number from 1 to 64"),
])
def test_bad_agent_configuration(env, words) -> None:
    with pytest.raises(ConfigError, match=words):
        DeployConfig.from_env(env)
    assert DeployConfig.from_env({"FLEET_AGENT_DISK_MARGIN": "2G"}).disk_margin == 2 * 1024**3


def test_server_frames_and_events_roundtrip(make_node, tmp_path, hub_root) -> None:
    """The server side: a command's frame, the agent's events applied, install state derived."""
    node, _ = make_node("gpu-02")
    version = _version(tmp_path, "v1", b"a")
    command = commands.create("test", node, CommandKind.DEPLOY, version, activate=True)
    frames = commands.frames_to_send(node.pk)
    assert [f.command_id for f in frames] == [command.command_id]
    command.refresh_from_db()
    assert command.state == "sent" and command.sent_at is not None
    commands.record_event(node.pk, CommandEvent(type="event", command_id=command.command_id, state="downloading",
                                                bytes_done=10, bytes_total=version.total_size,
                                                bytes_per_second=250 * 1024**2))
    command.refresh_from_db()
    assert (command.bytes_done, command.bytes_per_second) == (10, 250 * 1024**2)
    other, _ = make_node("gpu-03")
    assert commands.record_event(other.pk, CommandEvent(type="event", command_id=command.command_id,
                                                        state="active")) is None  # not its command
    done = commands.record_event(node.pk, CommandEvent(type="event", command_id=command.command_id, state="active",
                                                       bytes_done=version.total_size, bytes_total=version.total_size))
    assert done.state == "active" and done.finished_at is not None
    assert commands.frames_to_send(node.pk) == []  # finished: not re-sent on reconnect
    late = commands.record_event(node.pk, CommandEvent(type="event", command_id=command.command_id,
                                                       state="downloading", bytes_done=1))
    assert late.state == "active"  # a late progress frame never reopens a result
    install = node.hub_installs.get()
    assert install.state == "active" and install.version == version

"""The deployer's fast path against a live mirror and its blob server (small thresholds so it stays fast):
resume of only the missing ranges, a byte flipped by the blob server caught and refetched (or, when it keeps
coming back wrong, the version failing and never activating), and the standard HF cache layout: after the
fast path, snapshot_download(local_files_only=True) and transformers load the files with no request."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from fleet.agent.deployer import Deployer
from fleet.agent.modelstore import DeployConfig, ModelStore
from fleet.agent.pullconfig import PullConfig
from fleet.hub import blobserver
from fleet.hub.importer import import_folder
from tests.hub.test_deployer import Recorder, _deploy_frame, _run, _version

pytestmark = pytest.mark.django_db(transaction=True)
KIB = 1024
FAST = DeployConfig(keep=2, disk_margin=0, pull=PullConfig(min_size=64 * KIB, ranges=3, chunk=256 * KIB))


@pytest.fixture
def mirror(live_server, hub_root, make_node, settings):
    settings.FLEET_HUB_INLINE_MAX = 64 * 1024
    node, secret = make_node("gpu-01")
    return live_server.url.replace("localhost", "127.0.0.1"), secret, node


@pytest.fixture
def flips(monkeypatch):
    """{absolute offset: times}: the blob server flips that byte in the next responses covering it."""
    wanted: dict[int, int] = {}
    original = blobserver._Handler._send

    def send(self, handle, start: int, length: int, growing: bool) -> int:
        hits = [o for o, left in wanted.items() if left and start <= o < start + length]
        if not hits:
            return original(self, handle, start, length, growing)
        handle.seek(start)
        body = bytearray(handle.read(length))
        for offset in hits:
            body[offset - start] ^= 0x01
            wanted[offset] -= 1
        self.wfile.write(body)
        return length

    monkeypatch.setattr(blobserver._Handler, "_send", send)
    return wanted


def test_restart_resumes_only_the_missing_ranges(mirror, tmp_path) -> None:
    server, secret, _ = mirror
    version = _version(tmp_path, "v1", b"a", weights_mib=2)
    home = tmp_path / "agent"
    weights = version.files.get(path="model.safetensors")
    data = (tmp_path / "v1" / "model.safetensors").read_bytes()
    # a previous run wrote ranges 0, 1 and 5 of 8 and was killed
    store = ModelStore(home)
    final, partial = store.blob_paths("acme/tiny", weights.lfs_sha256)
    partial.parent.mkdir(parents=True)
    chunk, done = 256 * KIB, [0, 1, 5]
    body = bytearray(len(data))
    for i in done:
        body[i * chunk:(i + 1) * chunk] = data[i * chunk:(i + 1) * chunk]
    partial.write_bytes(body)
    final.with_name(final.name + ".fleet-ranges").write_text(json.dumps(
        {"size": len(data), "sha256": weights.lfs_sha256, "chunk": chunk, "done": done}))
    store.put_command("d1", kind="deploy", repo="acme/tiny", sha=version.sha, activate=False, state="downloading",
                      manifest=[f.manifest_entry() for f in version.files.all()])
    sent_before = blobserver.stats["bytes_sent"]

    async def scenario():
        recorder = Recorder()
        deployer = Deployer(home, secret, server, FAST)
        deployer.attach(recorder, server + "/hf")  # resumes d1 without waiting for the server
        while "d1" in deployer.tasks:
            await asyncio.sleep(0.05)
        final_event = recorder.final("d1")
        assert final_event.state == "staged", final_event
        first = next(e for e in recorder.events if e.state == "downloading")
        assert first.bytes_done >= len(done) * chunk  # started from what was on disk
        assert final_event.bytes_per_second and final_event.bytes_per_second > 0
        assert deployer.store.command("d1")["bytes_per_second"] == final_event.bytes_per_second

    asyncio.run(scenario())
    assert final.read_bytes() == data and not partial.exists()
    assert blobserver.stats["bytes_sent"] - sent_before == len(data) - len(done) * chunk  # only the missing ranges


def test_a_flipped_byte_is_refetched_and_a_lasting_one_never_activates(mirror, tmp_path, flips) -> None:
    server, secret, _ = mirror
    good = _version(tmp_path, "v1", b"a", weights_mib=1)
    bad = _version(tmp_path, "v2", b"b", weights_mib=1)
    home = tmp_path / "agent"
    good_sha256 = good.files.get(path="model.safetensors").lfs_sha256
    bad_sha256 = bad.files.get(path="model.safetensors").lfs_sha256
    frames = _deploy_frame(good, "d1", activate=True), _deploy_frame(bad, "d2", activate=True)

    async def scenario():
        recorder = Recorder()
        deployer = Deployer(home, secret, server, FAST)
        deployer.attach(recorder, server + "/hf")
        flips[300 * KIB] = 1  # once: the range is caught by the sha256 check, fetched again and rewritten
        result = await _run(deployer, frames[0], recorder)
        assert result.state == "active", result
        assert flips[300 * KIB] == 0
        link = deployer.store.snapshot("acme/tiny", good.sha) / "model.safetensors"
        assert hashlib.sha256(link.read_bytes()).hexdigest() == good_sha256
        flips.clear()
        flips[700 * KIB] = 100  # every time: the file fails, nothing of it reaches the cache, nothing activates
        result = await _run(deployer, frames[1], recorder)
        assert result.state == "failed" and "model.safetensors sha256 mismatch after 3 downloads" in result.error
        assert "activating" not in [e.state for e in recorder.events if e.command_id == "d2"]
        assert [ref.sha for ref in deployer.active()] == [good.sha]
        blob = deployer.store.blob_paths("acme/tiny", bad_sha256)[0]
        assert not blob.exists() and not blob.with_name(blob.name + ".fleet-partial").exists()
        assert not (deployer.store.snapshot("acme/tiny", bad.sha) / "model.safetensors").exists()
        assert not deployer.store.is_staged("acme/tiny", bad.sha)

    asyncio.run(scenario())


def test_the_cache_layout_loads_offline(mirror, tiny_llama, tmp_path, settings, monkeypatch) -> None:
    import httpx2
    from huggingface_hub import snapshot_download

    server, secret, _ = mirror
    settings.FLEET_HUB_INLINE_MAX = 1024  # the weights come through the blob server's redirect
    version, _ = import_folder("test", tiny_llama, "acme/tiny-llama", "v1")
    weights = version.files.get(path="model.safetensors")
    config = DeployConfig(keep=2, disk_margin=0, pull=PullConfig(min_size=4 * KIB, ranges=4, chunk=4 * KIB))
    assert weights.size > 3 * 4 * KIB
    home = tmp_path / "agent"
    frame = _deploy_frame(version, "d1", activate=True)
    frame = frame.model_copy(update={"repo": "acme/tiny-llama"})

    async def scenario():
        recorder = Recorder()
        deployer = Deployer(home, secret, server, config)
        deployer.attach(recorder, server + "/hf")
        assert (await _run(deployer, frame, recorder)).state == "active"
        assert [e["path"] for e in deployer.fast_entries(frame.manifest)] == ["model.safetensors"]
        return deployer.store

    store = asyncio.run(scenario())
    cache = store.cache
    blob = cache / "models--acme--tiny-llama" / "blobs" / weights.lfs_sha256
    link = store.snapshot("acme/tiny-llama", version.sha) / "model.safetensors"
    assert link.is_symlink() and link.resolve() == blob.resolve()
    assert not link.readlink().is_absolute()  # relative, as huggingface_hub links them
    requests: list[str] = []

    def refuse(self, request):
        requests.append(str(request.url))
        raise httpx2.ConnectError("no network in this test")

    monkeypatch.setattr(httpx2.HTTPTransport, "handle_request", refuse)
    folder = snapshot_download("acme/tiny-llama", revision=version.sha, cache_dir=cache, local_files_only=True,
                               endpoint=server + "/hf", token=secret)
    assert (Path(folder) / "model.safetensors").read_bytes() == (tiny_llama / "model.safetensors").read_bytes()
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained("acme/tiny-llama", revision=version.sha,
                                                              cache_dir=cache, local_files_only=True)
    assert model.config.hidden_size == 16
    assert requests == []

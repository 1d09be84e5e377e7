"""Pull-through: a registered version not yet synced is served to nodes while it is being stored, and
two clients pulling it at once still cause one upstream fetch per blob."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from fleet.hub import services, store
from fleet.hub.models import Blob, BlobState
from tests.hub.conftest import sample_files

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_nodes_pull_an_unsynced_version_with_one_upstream_fetch_per_blob(
        live_server, fake_hub, hub_root, make_node, alice, settings, tmp_path, hub_engine) -> None:
    settings.FLEET_HUB_INLINE_MAX = 0
    endpoint = live_server.url.replace("localhost", "127.0.0.1") + "/hf"
    files = sample_files(weights_mib=4)
    fake_hub.add("acme/tiny", files, revision="main")
    fake_hub.delay_per_mb = 0.25  # slow upstream: both nodes arrive while the weights are still coming
    version = services.add_version(alice, "acme/tiny", "main")
    assert set(Blob.objects.values_list("state", flat=True)) == {BlobState.MISSING}
    _, secret_a = make_node("gpu-a")
    _, secret_b = make_node("gpu-b")
    results: dict[str, Path] = {}
    errors: list[BaseException] = []

    def pull(name: str, secret: str) -> None:
        try:
            results[name] = Path(snapshot_download("acme/tiny", revision=version.sha, endpoint=endpoint,
                                                   token=secret, cache_dir=tmp_path / name))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=args) for args in (("a", secret_a), ("b", secret_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    expected = {k: v for k, v in files.items() if k in {"config.json", "tokenizer.json", "model.safetensors"}}
    for root in results.values():
        assert {p.name: p.read_bytes() for p in root.iterdir()} == expected
    assert dict(fake_hub.fetches) == {("acme/tiny", name): 1 for name in expected}
    weights = version.files.get(path="model.safetensors").blob
    weights.refresh_from_db()
    assert weights.state == BlobState.PRESENT and store.blob_path(weights.digest).exists()

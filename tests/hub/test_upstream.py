"""Resolving and syncing from an upstream hub (the fake one the tests serve): clear messages for every
failure, file filters, one upstream fetch per blob however many ask, resume, verification."""

from __future__ import annotations

import threading

import pytest

from fleet.hub import services, store, sync, upstream
from fleet.hub.catalog import CatalogError, delete_version
from fleet.hub.models import Blob, BlobState, HubModel, SyncState
from tests.hub.conftest import MIB, sample_files

pytestmark = pytest.mark.django_db(transaction=True)


def _add(fake_hub, alice, repo="acme/tiny", **kwargs):
    fake_hub.add(repo, sample_files(), revision="main")
    return services.add_version(alice, repo, "main", **kwargs)


def test_resolve_pins_a_sha_and_filters_files(fake_hub, hub_root, alice) -> None:
    sha = fake_hub.add("acme/tiny", sample_files(), revision="v1")
    resolved = services.preview("acme/tiny", "v1")
    assert resolved.sha == sha
    assert [e.path for e in resolved.entries] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert resolved.skipped == ["README.md", "original/consolidated.pth", "pytorch_model.bin"]
    weights = next(e for e in resolved.entries if e.path == "model.safetensors")
    assert weights.lfs_sha256 and weights.size == 3 * MIB
    only_config = services.preview("acme/tiny", "v1", allow_patterns=["config.json"])
    assert [e.path for e in only_config.entries] == ["config.json"]


def test_legacy_weights_are_kept_when_there_are_no_safetensors(fake_hub, hub_root) -> None:
    files = {"config.json": b"{}", "pytorch_model.bin": b"x" * 100}
    fake_hub.add("acme/old", files)
    assert [e.path for e in services.preview("acme/old", "main").entries] == ["config.json", "pytorch_model.bin"]


@pytest.mark.parametrize(("repo", "revision", "field", "words"), [
    ("acme/missing", "main", "repo", "was not found on"),
    ("acme/tiny", "v404", "revision", "revision 'v404' was not found in acme/tiny"),
    ("acme/gated", "main", "token", "is a gated repository"),
])
def test_resolve_failures_name_the_field(fake_hub, hub_root, repo, revision, field, words) -> None:
    fake_hub.add("acme/tiny", sample_files())
    fake_hub.add("acme/gated", sample_files(), gated=True, token="hf_right")
    with pytest.raises(upstream.UpstreamError) as error:
        services.preview(repo, revision)
    assert error.value.field == field and words in error.value.message


def test_gated_repo_with_a_token_that_has_access(fake_hub, hub_root, alice) -> None:
    fake_hub.add("acme/gated", sample_files(), gated=True, token="hf_right")
    with pytest.raises(upstream.UpstreamError, match="has not been granted access"):
        services.preview("acme/gated", "main", token="hf_wrong")
    version = services.add_version(alice, "acme/gated", "main", token="hf_right")
    model = HubModel.objects.get(repo_id="acme/gated")
    assert "hf_right" not in model.token_encrypted and store.decrypt_token(model.token_encrypted) == "hf_right"
    assert sync.fetch_blob(version.files.get(path="model.safetensors").blob_id)  # the stored token is used


def test_offline_and_unreachable(settings, hub_root) -> None:
    settings.FLEET_HF_OFFLINE = True
    with pytest.raises(upstream.UpstreamError, match="FLEET_HF_OFFLINE=1.*importmodel"):
        services.preview("acme/tiny", "main")
    settings.FLEET_HF_OFFLINE = False
    settings.FLEET_HF_UPSTREAM = "http://127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(upstream.UpstreamError, match="cannot reach the upstream hub at http://127.0.0.1:9"):
        services.preview("acme/tiny", "main")


def test_concurrent_fetches_download_each_blob_once(fake_hub, hub_root, alice) -> None:
    version = _add(fake_hub, alice)
    fake_hub.delay_per_mb = 0.2
    blob_ids = list(version.files.values_list("blob_id", flat=True))
    results = []

    def worker(blob_id: int) -> None:
        from django.db import connection

        results.append(sync.fetch_blob(blob_id))
        connection.close()

    threads = [threading.Thread(target=worker, args=(b,)) for b in blob_ids * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results.count(True) == len(blob_ids)
    assert all(count == 1 for count in fake_hub.fetches.values()) and len(fake_hub.fetches) == len(blob_ids)
    assert set(Blob.objects.values_list("state", flat=True)) == {BlobState.PRESENT}
    version.refresh_from_db()
    sync.tick()
    version.refresh_from_db()
    assert version.sync_state == SyncState.SYNCED
    for file in version.files.all():
        assert store.blob_path(file.blob.digest).read_bytes() == fake_hub.files_at("acme/tiny", version.sha)[file.path]


def test_an_interrupted_upstream_download_resumes(fake_hub, hub_root, alice) -> None:
    version = _add(fake_hub, alice)
    weights = version.files.get(path="model.safetensors")
    data = fake_hub.files_at("acme/tiny", version.sha)["model.safetensors"]
    partial = store.partial_path(weights.blob.digest)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data[: MIB])  # what a killed server had written
    Blob.objects.filter(pk=weights.blob_id).update(state=BlobState.DOWNLOADING, lease_until="2000-01-01T00:00Z")
    assert sync.fetch_blob(weights.blob_id)  # the dead holder's lease expired: taken over
    assert fake_hub.ranges == [("model.safetensors", f"bytes={MIB}-")]
    assert store.blob_path(weights.blob.digest).read_bytes() == data


def test_a_corrupt_upstream_body_is_discarded(fake_hub, hub_root, alice) -> None:
    version = _add(fake_hub, alice)
    weights = version.files.get(path="model.safetensors")
    key = f"{version.sha}/model.safetensors"
    original = fake_hub.repos["acme/tiny"].files[key]
    fake_hub.repos["acme/tiny"].files[key] = bytes(len(original))  # same size, wrong bytes
    assert not sync.fetch_blob(weights.blob_id)
    blob = Blob.objects.get(pk=weights.blob_id)
    assert blob.state == BlobState.FAILED and "checksum mismatch" in blob.error
    assert not store.blob_path(blob.digest).exists() and not store.partial_path(blob.digest).exists()


def test_full_disk_is_refused_before_downloading(fake_hub, hub_root, alice, settings) -> None:
    version = _add(fake_hub, alice)
    settings.FLEET_HUB_DISK_MARGIN = 1024**5
    weights = version.files.get(path="model.safetensors")
    assert not sync.fetch_blob(weights.blob_id)
    assert "not enough disk space" in Blob.objects.get(pk=weights.blob_id).error
    assert not fake_hub.fetches


def test_delete_collects_unshared_blobs_only(fake_hub, hub_root, alice) -> None:
    first = _add(fake_hub, alice)
    files = sample_files(seed=b"b")
    files["config.json"] = fake_hub.files_at("acme/tiny", first.sha)["config.json"]  # shared with v1
    fake_hub.add("acme/tiny", files, revision="v2")
    second = services.add_version(alice, "acme/tiny", "v2")
    for blob_id in Blob.objects.values_list("pk", flat=True):
        sync.fetch_blob(blob_id)
    shared = first.files.get(path="config.json").blob
    own = first.files.get(path="model.safetensors").blob
    delete_version(alice, first)
    assert store.blob_path(shared.digest).exists() and Blob.objects.filter(pk=shared.pk).exists()
    assert not store.blob_path(own.digest).exists() and not Blob.objects.filter(pk=own.pk).exists()
    assert second.files.count() == 3
    with pytest.raises(CatalogError, match="already registered"):
        services.add_version(alice, "acme/tiny", "v2")


def test_a_blob_lost_from_the_store_is_fetched_again(fake_hub, hub_root, alice, make_node, client) -> None:
    version = _add(fake_hub, alice)
    weights = version.files.get(path="model.safetensors")
    assert sync.fetch_blob(weights.blob_id)
    store.blob_path(weights.blob.digest).unlink()  # someone deleted it by hand
    _, secret = make_node()
    response = client.get(f"/hf/acme/tiny/resolve/{version.sha}/model.safetensors",
                          HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 302
    sync.tick()  # the engine fetches it again
    assert sync.wait_idle(30)
    assert store.blob_path(weights.blob.digest).exists()
    assert fake_hub.fetches[("acme/tiny", "model.safetensors")] == 2

"""The /hf mirror against the real huggingface_hub client: imported versions, byte-identical downloads,
auth, error codes the client turns into its own errors, path traversal refused."""

from __future__ import annotations

import http.client
from pathlib import Path
from urllib.parse import urlparse

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from fleet.hub.importer import import_folder
from tests.hub.conftest import sample_files, write_folder

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def mirror(live_server, hub_root, make_node, settings):
    settings.FLEET_HUB_INLINE_MAX = 64 * 1024  # the 3 MiB weights go through the blob server
    node, secret = make_node("gpu-01")
    return live_server.url.replace("localhost", "127.0.0.1") + "/hf", secret, node


@pytest.fixture
def imported(tmp_path, hub_root):
    files = sample_files()
    folder = write_folder(tmp_path / "src", files)
    version, created = import_folder("test", folder, "acme/tiny", "v1")
    assert created
    return version, files


def _raw(url: str, path: str, token: str | None, method: str = "GET") -> http.client.HTTPResponse:
    """A request with the path sent exactly as given (clients normalise '..' away)."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, parsed.path + path, headers=headers)
    response = conn.getresponse()
    response.read()
    return response


def test_snapshot_download_by_sha_and_by_tag_gets_identical_bytes(mirror, imported, tmp_path) -> None:
    from fleet.hub import blobserver

    endpoint, secret, _ = mirror
    version, files = imported
    sent_before = blobserver.stats["bytes_sent"]
    by_sha = Path(snapshot_download("acme/tiny", revision=version.sha, endpoint=endpoint, token=secret,
                                    cache_dir=tmp_path / "cache-a"))
    by_tag = Path(snapshot_download("acme/tiny", revision="v1", endpoint=endpoint, token=secret,
                                    cache_dir=tmp_path / "cache-b"))
    assert by_sha.name == by_tag.name == version.sha
    for root in (by_sha, by_tag):
        got = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        assert got == files  # importmodel takes every file; filters apply to upstream adds
    # both weights downloads went through the blob server, not the app server
    assert blobserver.stats["bytes_sent"] - sent_before >= 2 * len(files["model.safetensors"])
    result = HfApi(endpoint=endpoint, token=secret).verify_repo_checksums(
        "acme/tiny", revision=version.sha, cache_dir=tmp_path / "cache-a")
    assert result.mismatches == [] and result.missing_paths == [] and result.checked_count == len(files)


def test_list_models_and_head_metadata(mirror, imported) -> None:
    endpoint, secret, _ = mirror
    version, files = imported
    api = HfApi(endpoint=endpoint, token=secret)
    assert [(m.id, m.sha) for m in api.list_models()] == [("acme/tiny", version.sha)]
    info = api.model_info("acme/tiny", revision="v1", files_metadata=True)
    assert info.sha == version.sha and {s.rfilename for s in info.siblings} == set(files)
    lfs = next(s for s in info.siblings if s.rfilename == "model.safetensors").lfs
    assert lfs.sha256 == version.files.get(path="model.safetensors").lfs_sha256

    head = _raw(endpoint, f"/acme/tiny/resolve/{version.sha}/model.safetensors", secret, "HEAD")
    assert head.status == 200
    assert head.getheader("X-Repo-Commit") == version.sha
    assert head.getheader("ETag") == f'"{lfs.sha256}"' == head.getheader("X-Linked-Etag")
    assert head.getheader("Content-Length") == head.getheader("X-Linked-Size") == str(len(files["model.safetensors"]))
    assert head.getheader("Accept-Ranges") == "bytes"
    assert not [h for h in head.headers if h.lower().startswith("x-xet")]

    get = _raw(endpoint, f"/acme/tiny/resolve/{version.sha}/model.safetensors", secret)
    assert get.status == 302  # the body never goes through the app server
    assert "/blobs/" in get.getheader("Location")


def test_range_requests_through_the_blob_server(mirror, imported) -> None:
    import httpx2

    endpoint, secret, _ = mirror
    version, files = imported
    url = f"{endpoint}/acme/tiny/resolve/{version.sha}/model.safetensors"
    with httpx2.Client(follow_redirects=True) as client:
        response = client.get(url, headers={"Authorization": f"Bearer {secret}", "Range": "bytes=1000-1999"})
        assert response.status_code == 206
        assert response.content == files["model.safetensors"][1000:2000]
        tail = client.get(url, headers={"Authorization": f"Bearer {secret}", "Range": "bytes=-10"})
        assert tail.content == files["model.safetensors"][-10:]
        small = client.get(f"{endpoint}/acme/tiny/resolve/v1/config.json",
                           headers={"Authorization": f"Bearer {secret}", "Range": "bytes=2-5"})
        assert small.status_code == 206 and small.content == files["config.json"][2:6]
        signed = client.get(url, headers={"Authorization": f"Bearer {secret}"}, follow_redirects=False)
        tampered = signed.headers["location"].replace("sig=", "sig=0")
        assert client.get(tampered).status_code == 403


def test_auth_and_errors_map_to_the_clients_named_errors(mirror, imported, tmp_path) -> None:
    from fleet.inventory.models import NodeCredential

    endpoint, secret, node = mirror
    version, _ = imported
    assert _raw(endpoint, "/api/models", None).status == 401
    assert _raw(endpoint, f"/acme/tiny/resolve/{version.sha}/config.json", None).status == 401
    assert _raw(endpoint, f"/acme/tiny/resolve/{version.sha}/config.json", "fns_wrong").status == 401

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/missing", "config.json", endpoint=endpoint, token=secret, cache_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("acme/tiny", "config.json", revision="v9", endpoint=endpoint, token=secret,
                        cache_dir=tmp_path / "c")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("acme/tiny", "nope.json", revision=version.sha, endpoint=endpoint, token=secret,
                        cache_dir=tmp_path / "c")
    unknown = _raw(endpoint, f"/acme/tiny/resolve/{'0' * 40}/config.json", secret)
    assert unknown.status == 404 and unknown.getheader("X-Error-Code") == "RevisionNotFound"

    for path in ("/acme/tiny/resolve/v1/../../../etc/passwd", "/acme/tiny/resolve/v1/%2e%2e/secret_key",
                 "/acme/tiny/resolve/v1/a/../config.json", "/api/models/acme/tiny/tree/v1/..%2F..%2Fetc"):
        response = _raw(endpoint, path, secret)
        assert response.status in (400, 404), path
        assert response.getheader("X-Repo-Commit") in (None, version.sha)

    NodeCredential.objects.filter(node=node).update(revoked_at="2026-01-01T00:00:00Z")
    assert _raw(endpoint, f"/acme/tiny/resolve/{version.sha}/config.json", secret).status == 401


def test_hub_api_key_works_and_other_scopes_do_not(mirror, imported, alice) -> None:
    from fleet.accounts.apikeys import create_api_key

    endpoint, _, _ = mirror
    version, _ = imported
    _, hub_key = create_api_key(alice, alice, ["hub"])
    _, metrics_key = create_api_key(alice, alice, ["metrics"])
    assert _raw(endpoint, f"/acme/tiny/resolve/{version.sha}/config.json", hub_key).status == 200
    assert _raw(endpoint, f"/acme/tiny/resolve/{version.sha}/config.json", metrics_key).status == 401


def test_unapproved_versions_are_not_served(mirror, imported, settings, tmp_path) -> None:
    from fleet.hub.models import ApprovalState

    endpoint, secret, _ = mirror
    version, _ = imported
    api = HfApi(endpoint=endpoint, token=secret)
    assert [m.id for m in api.list_models()] == ["acme/tiny"]  # listed while approved
    version.approval = ApprovalState.PENDING
    version.save()
    with pytest.raises(GatedRepoError):
        hf_hub_download("acme/tiny", "config.json", revision=version.sha, endpoint=endpoint, token=secret,
                        cache_dir=tmp_path / "c")
    assert [m.id for m in api.list_models()] == []


def test_transformers_loads_a_tiny_model_through_the_mirror(mirror, tiny_llama, tmp_path) -> None:
    """As a node would: HF_ENDPOINT and HF_TOKEN in the environment of a fresh process, empty cache."""
    import subprocess
    import sys

    endpoint, secret, _ = mirror
    version, _ = import_folder("test", tiny_llama, "acme/tiny-llama", "v1")  # no revision: main is what it serves
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained('acme/tiny-llama')\n"
        "reference = AutoModelForCausalLM.from_pretrained(sys.argv[2])\n"
        "ids = torch.tensor([[1, 2, 3, 4]])\n"
        "assert torch.equal(model(ids).logits, reference(ids).logits)\n"
        "print('loaded', model.config.model_type, sum(p.numel() for p in model.parameters()))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": endpoint, "HF_TOKEN": secret, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-c", script, version.sha, str(tiny_llama)], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded llama" in result.stdout
    assert (tmp_path / "hf" / "hub" / "models--acme--tiny-llama" / "snapshots" / version.sha).is_dir()


def test_the_hf_cli_works_against_the_mirror(mirror, imported, tmp_path) -> None:
    import shutil
    import subprocess
    import sys

    endpoint, secret, _ = mirror
    version, files = imported
    hf = shutil.which("hf", path=str(Path(sys.executable).parent))
    if hf is None:
        pytest.skip("the hf CLI of huggingface_hub is not installed")
    env = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": endpoint, "HF_TOKEN": secret, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_COLOR": "1"}
    listed = subprocess.run([hf, "models", "ls"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "acme/tiny" in listed.stdout
    target = tmp_path / "download"
    got = subprocess.run([hf, "download", "acme/tiny", "--revision", "v1", "--local-dir", str(target)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert (target / "model.safetensors").read_bytes() == files["model.safetensors"]


def _snapshot(endpoint: str, secret: str, cache: Path) -> dict[str, bytes]:
    root = Path(snapshot_download("acme/tiny", endpoint=endpoint, token=secret, cache_dir=cache))
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_no_revision_gets_the_current_version_or_the_operators_default(mirror, imported, tmp_path, alice) -> None:
    """What HF clients ask by default (`main`, or no revision at all) is the newest approved, synced version
    unless an operator marked another one as the default."""
    from fleet.accounts.models import AuditEvent
    from fleet.hub import catalog
    from fleet.hub.models import ApprovalState

    endpoint, secret, _ = mirror
    v1, files_v1 = imported
    files_v2 = sample_files(seed=b"b")
    v2, _ = import_folder("test", write_folder(tmp_path / "v2", files_v2), "acme/tiny", "v2")
    api = HfApi(endpoint=endpoint, token=secret)

    assert _snapshot(endpoint, secret, tmp_path / "c1") == files_v2
    assert api.model_info("acme/tiny").sha == v2.sha  # /api/models/acme/tiny, no revision in the URL
    assert [(m.id, m.sha) for m in api.list_models()] == [("acme/tiny", v2.sha)]

    assert catalog.set_default(alice, v1)
    assert AuditEvent.objects.filter(action="model.default_set", target_repr="acme/tiny").exists()
    assert _snapshot(endpoint, secret, tmp_path / "c2") == files_v1
    assert api.model_info("acme/tiny", revision="main").sha == v1.sha
    assert [(m.id, m.sha) for m in api.list_models()] == [("acme/tiny", v1.sha)]

    catalog.set_default(alice, None, v1.model)
    v3, _ = import_folder("test", write_folder(tmp_path / "v3", sample_files(seed=b"c")), "acme/tiny", "v3")
    v3.approval = ApprovalState.PENDING  # newest, but not approved: not what main serves
    v3.save()
    assert _snapshot(endpoint, secret, tmp_path / "c3") == files_v2


def test_main_skips_versions_still_syncing(hub_root, tmp_path, alice) -> None:
    from fleet.hub import catalog
    from fleet.hub.catalog import register_version
    from fleet.hub.importer import entry_for
    from fleet.hub.models import SourceKind, SyncState

    synced, _ = import_folder("test", write_folder(tmp_path / "a", sample_files()), "acme/tiny", "v1")
    folder = write_folder(tmp_path / "b", sample_files(seed=b"b"))
    entries = [entry_for(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()]
    syncing = register_version(alice, repo_id="acme/tiny", revision="main", sha="b" * 40, entries=entries,
                               source=SourceKind.UPSTREAM)
    assert syncing.sync_state == SyncState.QUEUED
    assert catalog.current_version(synced.model) == synced
    syncing.approval = "rejected"
    with pytest.raises(catalog.CatalogError, match="approve it"):
        catalog.set_default(alice, syncing)


def test_operators_mark_the_default_on_the_version_page(client, bob, charlie, imported, tmp_path) -> None:
    from fleet.accounts.models import AuditEvent
    from fleet.hub.models import HubModel

    v1, _ = imported
    v2, _ = import_folder("test", write_folder(tmp_path / "v2", sample_files(seed=b"b")), "acme/tiny", "v2")
    client.force_login(charlie)
    assert client.post(f"/models/versions/{v1.pk}/default/").status_code == 403
    client.force_login(bob)
    page = client.get(f"/models/versions/{v1.pk}/").content.decode()
    assert "Make default" in page and "data-current" not in page
    client.post(f"/models/versions/{v1.pk}/default/")
    assert HubModel.objects.get(repo_id="acme/tiny").default_version == v1
    assert AuditEvent.objects.get(action="model.default_set").actor_name == "bob"
    page = client.get(f"/models/versions/{v1.pk}/").content.decode()
    assert "data-current" in page and "Unset default" in page
    assert client.get("/models/").content.decode().count('title="what clients get') == 1
    client.post(f"/models/versions/{v1.pk}/undefault/")
    assert HubModel.objects.get(repo_id="acme/tiny").default_version is None
    assert "data-current" in client.get(f"/models/versions/{v2.pk}/").content.decode()

"""Hub hardening: the importer reads nothing outside the imported folder, the embedded blob server holds a
bounded number of connections, and a changed token key keeps stored upstream tokens readable."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from fleet.hub import blobserver, services, store, sync
from fleet.hub.catalog import CatalogError
from fleet.hub.importer import import_folder
from fleet.hub.models import Blob, BlobState, HubModel
from tests.hub.conftest import sample_files, write_folder

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_importer_refuses_a_link_out_of_the_folder(tmp_path, hub_root) -> None:
    secret = tmp_path / "outside" / "secret_key"
    secret.parent.mkdir()
    secret.write_text("do not import me")
    folder = write_folder(tmp_path / "model", sample_files(1))
    (folder / "notes.json").symlink_to(secret)
    with pytest.raises(CatalogError, match=r"notes.json is a link to .*outside") as error:
        import_folder("test", folder, "acme/tiny", "v1")
    assert error.value.field == "path"
    assert not HubModel.objects.exists() and not Blob.objects.exists()
    assert not any(path.is_file() for path in hub_root.rglob("*"))  # nothing was copied into the store


def test_a_link_inside_the_folder_is_followed(tmp_path, hub_root) -> None:
    files = sample_files(1)
    folder = write_folder(tmp_path / "model", files)
    (folder / "alias.json").symlink_to(folder / "config.json")
    version, _ = import_folder("test", folder, "acme/tiny", "v1")
    alias = version.files.get(path="alias.json")
    assert store.blob_path(alias.blob.digest).read_bytes() == files["config.json"]


def test_the_blob_server_caps_its_connections(settings, tmp_path, hub_root) -> None:
    settings.FLEET_BLOB_MAX_CONNECTIONS = 2
    data = b"x" * 1000
    sha256, _, size = store.hash_file(write_folder(tmp_path / "b", {"blob": data}) / "blob")
    store.install_file(tmp_path / "b" / "blob", sha256)
    port = blobserver.ensure_started()
    url = f"http://127.0.0.1:{port}{blobserver.signed_path(sha256, size)}"
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # silent clients hold both slots
    try:
        deadline = time.monotonic() + 10
        while getattr(blobserver._server, "active", 2) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "5"
        assert threading.active_count() <= before + 2  # no thread was started for the refused connection
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while getattr(blobserver._server, "active", 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    with urllib.request.urlopen(url, timeout=10) as response:  # slots free again
        assert response.read() == data


def test_a_changed_token_key_keeps_stored_tokens_readable(settings, fake_hub, hub_root, alice) -> None:
    settings.FLEET_HUB_TOKEN_KEY = "first-key-" + "a" * 30
    fake_hub.add("acme/gated", sample_files(1), gated=True, token="hf_right")
    version = services.add_version(alice, "acme/gated", "main", token="hf_right")
    stored = HubModel.objects.get(repo_id="acme/gated").token_encrypted

    settings.FLEET_HUB_TOKEN_KEY = "second-key-" + "b" * 30
    settings.FLEET_HUB_TOKEN_OLD_KEYS = ["first-key-" + "a" * 30]
    assert store.decrypt_token(stored) == "hf_right"
    fresh = store.encrypt_token("hf_right")  # new writes use the new key alone
    assert sync.fetch_blob(version.files.get(path="model.safetensors").blob_id)  # the old token still works

    settings.FLEET_HUB_TOKEN_OLD_KEYS = []  # the old key forgotten: a clear error, not a silent blank token
    assert store.decrypt_token(fresh) == "hf_right"
    with pytest.raises(store.TokenKeyError, match="FLEET_HUB_TOKEN_OLD_KEYS") as error:
        store.decrypt_token(stored)
    assert error.value.field == "token"
    config = version.files.get(path="config.json").blob
    assert not sync.fetch_blob(config.pk)
    config.refresh_from_db()
    assert config.state == BlobState.FAILED and "cannot be decrypted" in config.error
    assert not fake_hub.failed and ("acme/gated", "config.json") not in fake_hub.fetches

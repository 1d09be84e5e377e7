"""Every hub page has a role and every mirror URL bearer auth; hub settings are validated at start-up;
production blob serving goes through nginx (X-Accel-Redirect), never as a body from Django."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from fleet.hub import urls as hub_urls
from fleet.hub import urls_mirror
from fleet.hub.importer import import_folder
from tests.hub.conftest import sample_files, write_folder

ROOT = Path(__file__).resolve().parents[2]


def test_every_hub_url_is_protected() -> None:
    for pattern in hub_urls.urlpatterns:
        assert getattr(pattern.callback, "required_role", None), pattern.name
    for pattern in urls_mirror.urlpatterns:
        assert getattr(pattern.callback, "hub_auth", False), pattern.name


@pytest.mark.parametrize(("variable", "value", "hint"), [
    ("FLEET_HF_UPSTREAM", "huggingface.co", "must be an http:// or https:// URL"),
    ("FLEET_HF_OFFLINE", "perhaps", "boolean"),
    ("FLEET_HUB_ACCEL_REDIRECT", "_blobs", "nginx internal location"),
    ("FLEET_HUB_RATE_LIMIT", "fast", "is not a size"),
    ("FLEET_BLOB_PORT", "99999", "at most 65535"),
    ("FLEET_BLOB_SERVER", "0", "needs FLEET_HUB_ACCEL_REDIRECT"),
])
def test_bad_hub_setting_names_the_variable(tmp_path, variable, value, hint) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "DATABASE_URL", "REDIS_URL"))}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup(); print('started')"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**clean, "DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_VAR_DIR": str(tmp_path),
                                 variable: value})
    assert result.returncode == 2 and "started" not in result.stdout
    assert variable in result.stderr and hint in result.stderr and "Traceback" not in result.stderr


@pytest.mark.django_db
def test_accel_redirect_in_production(tmp_path, hub_root, make_node, settings) -> None:
    settings.FLEET_HUB_ACCEL_REDIRECT = "/_fleet_blobs"
    settings.FLEET_HUB_INLINE_MAX = 1024
    _, secret = make_node()
    version, _ = import_folder("test", write_folder(tmp_path / "m", sample_files(1)), "acme/tiny", "v1")
    weights = version.files.get(path="model.safetensors")
    response = Client().get(f"/hf/acme/tiny/resolve/{version.sha}/model.safetensors",
                            HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200 and response.content == b""
    assert response["X-Accel-Redirect"] == f"/_fleet_blobs/sha256/{weights.lfs_sha256[:2]}/{weights.lfs_sha256}"
    assert response["X-Linked-Size"] == str(weights.size) and response["X-Repo-Commit"] == version.sha


def test_importmodel_command_is_deterministic(tmp_path, settings) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "DATABASE_URL", "REDIS_URL"))},
           "FLEET_VAR_DIR": str(tmp_path / "var"), "FLEET_HUB_DISK_MARGIN": "0"}
    folder = write_folder(tmp_path / "model", sample_files(1))

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)

    assert manage("migrate", "-v", "0").returncode == 0
    first = manage("importmodel", str(folder), "--repo", "acme/tiny", "--revision", "v1")
    assert first.returncode == 0, first.stderr
    again = manage("importmodel", str(folder), "--repo", "acme/tiny", "--revision", "v1")
    assert "already imported" in again.stdout
    assert first.stdout.splitlines()[-1] == again.stdout.splitlines()[-1]  # the same sha
    bad = manage("importmodel", str(tmp_path / "nowhere"), "--repo", "acme/tiny", "--revision", "v2")
    assert bad.returncode == 1 and "path:" in bad.stderr and "is not a folder" in bad.stderr
    bad = manage("importmodel", str(folder), "--repo", "no-slash", "--revision", "v2")
    assert "--repo must look like ORG/NAME" in bad.stderr


@pytest.mark.django_db
def test_the_demo_model_is_a_loadable_llama(tmp_path, hub_root, settings) -> None:
    from fleet.hub.demo_model import DEMO_REPO, publish_demo_model, write_tiny_llama
    from fleet.hub.models import ModelVersion

    settings.VAR_DIR = tmp_path
    sha = publish_demo_model()
    assert publish_demo_model() == sha  # idempotent across demo restarts
    assert ModelVersion.objects.get(model__repo_id=DEMO_REPO).sha == sha
    pytest.importorskip("torch", reason="torch is not installed (pip install -e .[test])")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(write_tiny_llama(tmp_path / "check"),
                                                                    output_loading_info=True)
    assert model.config.num_hidden_layers == 2 and model.num_parameters() == 13_520
    assert not info["missing_keys"] and not info["unexpected_keys"]  # every weight came from our file

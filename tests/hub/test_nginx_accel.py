"""The production blob path with a real nginx in front of Daphne: Django answers /hf with X-Accel-Redirect
and nginx sends the file (Range included); a version not stored yet answers 503 + Retry-After, which the
agent's deployer waits out instead of failing. Skipped where Debian's nginx is not installed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from fleet.agent import deployer as deployer_module
from fleet.agent.deployer import Deployer
from fleet.agent.modelstore import DeployConfig
from tests.hub.conftest import sample_files, write_folder
from tests.hub.fakehub import FakeHub
from tests.integration.harness import Stack, free_port, wait_until

pytestmark = pytest.mark.integration
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.fixture
def nginx_stack(tmp_path):
    if NGINX is None:
        pytest.skip("Debian's nginx is not installed (apt-get install -y nginx-light)")
    upstream = FakeHub().start()
    stack = Stack(tmp_path, offline_after=10, engine=True)
    stack.env.update({"FLEET_HF_UPSTREAM": upstream.url, "FLEET_HUB_ACCEL_REDIRECT": "/_fleet_blobs/",
                      "FLEET_BLOB_SERVER": "0", "FLEET_HUB_INLINE_MAX": "65536", "FLEET_HUB_DISK_MARGIN": "0"})
    stack.start()
    port = free_port()
    conf = tmp_path / "nginx.conf"
    temp = tmp_path / "nginx-tmp"
    temp.mkdir()
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read the store (pytest's tmp is 0700)
    conf.write_text(f"""{user} daemon off; worker_processes 1; pid {temp}/nginx.pid; error_log {temp}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off; client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
  uwsgi_temp_path {temp}; scgi_temp_path {temp};
  server {{
    listen 127.0.0.1:{port};
    location /_fleet_blobs/ {{ internal; alias {tmp_path}/var/hub/blobs/; sendfile on; }}
    location / {{ proxy_pass http://127.0.0.1:{stack.ports[0]}; proxy_set_header Host $host; }}
  }}
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(temp)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and _up(url), 45, "nginx")
        yield stack, upstream, url
    finally:
        proc.terminate()
        proc.wait(10)
        stack.stop()
        upstream.stop()


def _up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/accounts/login/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _node_secret(stack: Stack, tmp_path: Path) -> str:
    from tests.integration.harness import Agent

    token = stack.manage("createenrollmenttoken", "--expires", "10m")
    agent = Agent(tmp_path / "agent-creds", stack.env)
    assert agent.cli("enroll", "--server", stack.url(), "--token", token, "--name", "gpu-01").returncode == 0
    return json.loads((agent.home / "credentials.json").read_text())["secret"]


def test_nginx_serves_blobs_and_the_deployer_waits_for_a_sync(nginx_stack, tmp_path, monkeypatch, caplog) -> None:
    import httpx2

    stack, upstream, url = nginx_stack
    files = sample_files(weights_mib=3, seed=b"n")
    sha = stack.manage("importmodel", str(write_folder(tmp_path / "m", files)), "--repo", "acme/tiny",
                       "--revision", "v1").splitlines()[-1]
    secret = _node_secret(stack, tmp_path)
    root = Path(snapshot_download("acme/tiny", revision="v1", endpoint=url + "/hf", token=secret,
                                  cache_dir=tmp_path / "cache"))
    got = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert got == files and root.name == sha
    ranged = httpx2.get(f"{url}/hf/acme/tiny/resolve/{sha}/model.safetensors",
                        headers={"Authorization": f"Bearer {secret}", "Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == files["model.safetensors"][100:200]
    assert "x-accel-redirect" not in ranged.headers  # nginx consumed it
    assert httpx2.get(f"{url}/_fleet_blobs/sha256/").status_code == 404  # internal only

    # An upstream version nobody synced yet: 503 + Retry-After until the engine stores it.
    upstream.add("acme/other", sample_files(weights_mib=2, seed=b"o"))
    upstream.delay_per_mb = 40.0  # the engine's fetch crawls until the deployer below has been told to wait
    other = stack.manage("addmodel", "acme/other", "--revision", "main").splitlines()[-1]
    busy = httpx2.get(f"{url}/hf/acme/other/resolve/{other}/model.safetensors",
                      headers={"Authorization": f"Bearer {secret}"})
    assert busy.status_code == 503 and busy.headers["Retry-After"]
    monkeypatch.setattr(deployer_module, "_retry_after", lambda value: 1)
    manifest = json.loads(stack.manage("shell", "-c", (
        "import json; from fleet.hub.models import ModelVersion; "
        f"v = ModelVersion.objects.get(sha='{other}'); "
        "print(json.dumps([f.manifest_entry() for f in v.files.all()]))")).splitlines()[-1])

    async def scenario() -> str:
        from fleet.agent.protocol import Deploy

        events = []

        async def send(event) -> None:
            events.append(event)

        deployer = Deployer(tmp_path / "agent", secret, url, DeployConfig(keep=2, disk_margin=0))
        deployer.attach(send, url + "/hf")
        await deployer.handle(Deploy(type="deploy", command_id="d1", repo="acme/other", sha=other,
                                     manifest=manifest))
        for _ in range(600):  # however loaded the box: the deployer first meets the 503, then the fetch ends
            if "the mirror is still fetching acme/other" in caplog.text:
                break
            await asyncio.sleep(0.1)
        upstream.delay_per_mb = 0.0
        while "d1" in deployer.tasks:
            await asyncio.sleep(0.1)
        return events[-1].state

    # The engine fetched it meanwhile (web requests never download); the deployer waited, then got it.
    assert asyncio.run(scenario()) == "staged"
    assert "the mirror is still fetching acme/other" in caplog.text
    assert upstream.fetches[("acme/other", "model.safetensors")] == 1

"""The shipped nginx config in front of a `--proxy-headers` Daphne (as docker/ runs them): a client cannot
claim an address in FLEET_METRICS_ALLOW with a forged X-Forwarded-For. Skipped without Debian's nginx."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, Stack, free_port, wait_until

pytestmark = pytest.mark.integration
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def shipped_server_block(daphne_port: int, port: int, tmp: Path) -> str:
    """docker/nginx.conf with its upstream, listen address and file paths pointed at this test."""
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    conf = re.sub(r"upstream fleet_daphne \{[^}]*\}", f"upstream fleet_daphne {{ server 127.0.0.1:{daphne_port}; }}",
                  conf)
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    return conf.replace("/srv/static/", f"{tmp}/static/").replace("/srv/hub/blobs/", f"{tmp}/blobs/")


@pytest.fixture
def proxied(tmp_path):
    if NGINX is None:
        pytest.skip("Debian's nginx is not installed (apt-get install -y nginx-light)")
    stack = Stack(tmp_path, daphne_args=("--proxy-headers",))
    stack.env["FLEET_METRICS_ALLOW"] = "10.9.9.9/32"  # a scraper's address; this test's client is 127.0.0.1
    stack.start()
    port, temp = free_port(), tmp_path / "nginx-tmp"
    temp.mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {temp}/nginx.pid; error_log {temp}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
  uwsgi_temp_path {temp}; scgi_temp_path {temp};
  {shipped_server_block(stack.ports[0], port, tmp_path)}
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(temp)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and _status(url + "/accounts/login/") == 200, 45, "nginx")
        yield stack, url
    finally:
        proc.terminate()
        proc.wait(10)
        stack.stop()


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_a_forged_forwarded_for_does_not_open_metrics(proxied) -> None:
    stack, url = proxied
    forged = {"X-Forwarded-For": "10.9.9.9"}
    assert _status(url + "/metrics", forged) == 401
    assert _status(url + "/metrics", {"X-Forwarded-For": "10.9.9.9, 10.9.9.9"}) == 401
    assert _status(url + "/metrics") == 401
    # The same Daphne trusts the header it is given: nginx is the only hop allowed to set it.
    assert _status(stack.url() + "/metrics", forged) == 200, "control: Daphne honours X-Forwarded-For"


def test_the_shipped_config_sets_the_header_from_the_peer_address() -> None:
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    assert "$proxy_add_x_forwarded_for" not in conf.replace("# ", "").split("upstream")[1]
    assert conf.count("proxy_set_header X-Forwarded-For $remote_addr;") == conf.count("proxy_pass ")

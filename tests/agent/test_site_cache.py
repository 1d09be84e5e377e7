"""The site cache against a fake server mirror: single-flight fetches, checksums, Range and HEAD as the mirror
answers them, site tokens (fleet.lib.sitetoken), and the frames that carry its offer and its counters."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from fleet.agent.protocol import FrameError, parse_agent_frame, parse_server_frame
from fleet.agent.sitecache import SiteCache, cache_report
from fleet.agent.sitecache_http import parse_listen, serve
from fleet.lib import sitetoken

SHA = "a" * 40
SECRET = "fns_cache-node-secret"
WEIGHTS = os.urandom(3 * 1024 * 1024 + 17)
CONFIG = b'{"model_type": "llama"}'
LFS = hashlib.sha256(WEIGHTS).hexdigest()
GIT = hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()  # noqa: S324 - git's blob id
KEY = sitetoken.site_key("server-secret", "plant-7")


class Mirror:
    """The server's /hf mirror for one version: HEAD with the mirror's headers, GET served slowly."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        self.files = files  # path → (bytes served, etag announced)
        self.gets: list[str] = []
        self.auth: set[str | None] = set()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _head(self) -> bytes | None:
                mirror.auth.add(self.headers.get("Authorization"))
                path = self.path.split("/resolve/" + SHA + "/", 1)[-1]
                if "/resolve/" not in self.path or path not in mirror.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                data, etag = mirror.files[path]
                self.send_response(200)
                for name, value in (("X-Repo-Commit", SHA), ("ETag", f'"{etag}"'), ("X-Linked-Etag", f'"{etag}"'),
                                    ("X-Linked-Size", str(len(data))), ("Content-Length", str(len(data))),
                                    ("Accept-Ranges", "bytes")):
                    self.send_header(name, value)
                self.end_headers()
                return data

            def do_HEAD(self) -> None:
                self._head()

            def do_GET(self) -> None:
                data = self._head()
                if data is None:
                    return
                mirror.gets.append(self.path)
                for start in range(0, len(data), 256 * 1024):  # slowly: requests pile up meanwhile
                    self.wfile.write(data[start:start + 256 * 1024])
                    time.sleep(0.02)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hf"

    def close(self) -> None:
        if self.server.socket.fileno() >= 0:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def site(tmp_path):
    def make(files: dict[str, tuple[bytes, str]]):
        mirror = Mirror(files)
        cache = SiteCache(tmp_path / "site-cache", SECRET)
        cache.mirror, cache.key = mirror.url, KEY
        server = serve(cache, "127.0.0.1", 0)
        made.append((mirror, server))
        return mirror, cache, f"http://127.0.0.1:{server.server_address[1]}"

    made: list = []
    yield make
    for mirror, server in made:
        server.shutdown()
        server.server_close()
        mirror.close()


def auth(node_id: int = 3, key: str = KEY, ttl: float = 60) -> dict[str, str]:
    return {"Authorization": f"Bearer {sitetoken.mint(key, node_id, ttl)}"}


def resolve(base: str, path: str) -> str:
    return f"{base}/hf/plant/tiny/resolve/{SHA}/{path}"


def test_site_tokens():
    token = sitetoken.mint(KEY, 42, 60)
    assert sitetoken.verify(KEY, token) == 42
    assert sitetoken.verify(sitetoken.site_key("server-secret", "plant-8"), token) is None  # another site
    assert sitetoken.verify(sitetoken.site_key("other-secret", "plant-7"), token) is None
    assert sitetoken.verify(KEY, sitetoken.mint(KEY, 42, -1)) is None  # expired
    forged = token.replace(".42.", ".43.")
    assert sitetoken.verify(KEY, forged) is None
    assert sitetoken.verify(KEY, "fns_a-node-secret") is None and sitetoken.verify("zz", token) is None


def test_concurrent_requests_fetch_each_blob_once_and_verify_it(site):
    mirror, cache, base = site({"model.safetensors": (WEIGHTS, LFS), "config.json": (CONFIG, GIT)})
    with httpx2.Client(follow_redirects=True, timeout=30) as client:
        def get(path: str) -> bytes:
            response = client.get(resolve(base, path), headers=auth())
            assert response.status_code == 200, response.text
            return response.content

        with ThreadPoolExecutor(6) as pool:
            bodies = list(pool.map(get, ["model.safetensors"] * 5 + ["config.json"]))
        assert bodies == [WEIGHTS] * 5 + [CONFIG]
        assert sorted(p.rsplit("/", 1)[-1] for p in mirror.gets) == ["config.json", "model.safetensors"]  # once
        assert mirror.auth == {f"Bearer {SECRET}"}  # the cache's own credential upstream, never a neighbour's
        assert (cache.blobs / LFS).read_bytes() == WEIGHTS and (cache.blobs / GIT).read_bytes() == CONFIG

        again = client.get(resolve(base, "model.safetensors"), headers=auth())  # from disk: no new fetch
        assert again.content == WEIGHTS and len(mirror.gets) == 2
        part = client.get(resolve(base, "model.safetensors"), headers={**auth(), "Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == WEIGHTS[1000:2000]
        assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(WEIGHTS)}"
        head = client.head(resolve(base, "model.safetensors"), headers=auth())  # what huggingface_hub reads
        assert head.status_code == 200 and head.headers["X-Repo-Commit"] == SHA
        assert head.headers["X-Linked-Etag"] == f'"{LFS}"' and head.headers["X-Linked-Size"] == str(len(WEIGHTS))
        missing = client.head(resolve(base, "nope.bin"), headers=auth())
        assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    report = cache_report(cache)
    assert report.bytes_upstream == len(WEIGHTS) + len(CONFIG) and report.hits >= 2 and report.misses >= 1
    assert report.disk_bytes == len(WEIGHTS) + len(CONFIG) and report.blobs == 2
    assert report.bytes_served >= 6 * len(WEIGHTS) and parse_agent_frame(report.model_dump_json()).type == "cache"


def test_neighbours_without_a_valid_site_token_are_refused(site):
    mirror, _cache, base = site({"config.json": (CONFIG, GIT)})
    with httpx2.Client(timeout=10) as client:
        for headers in ({}, {"Authorization": "Bearer fns_a-node-secret"}, auth(ttl=-5),
                        auth(key=sitetoken.site_key("server-secret", "plant-8"))):
            assert client.get(resolve(base, "config.json"), headers=headers).status_code == 401
    assert mirror.gets == []


def test_a_blob_whose_bytes_do_not_match_is_never_stored(site):
    mirror, cache, base = site({"model.safetensors": (WEIGHTS[:-1] + b"X", LFS)})
    with httpx2.Client(follow_redirects=True, timeout=30) as client:
        try:
            client.get(resolve(base, "model.safetensors"), headers=auth())
        except httpx2.HTTPError:
            pass  # the body stops short of the checksum: the client never gets a whole wrong file
    deadline = time.monotonic() + 10
    while cache.fetching() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (cache.blobs / LFS).exists() and not list(cache.blobs.glob("*.partial"))
    assert cache.stats.errors == 1


def test_offer_and_advert_frames_are_validated():
    token = sitetoken.mint(KEY, 3, 60)
    welcome = ('{"type": "welcome", "v": 1, "node_id": 3, "node_name": "n", "heartbeat_interval": 5, '
               '"metrics_interval": 1, "offline_after": 15, "site_cache": {"site": "plant-7", '
               '"url": "http://10.0.0.5:8900", "token": "%s"}}')
    assert parse_server_frame(welcome % token).site_cache.token == token
    with pytest.raises(FrameError, match="site_cache.token"):
        parse_server_frame(welcome % "fns_secret")
    hello = ('{"type": "hello", "v": 1, "agent_version": "1", "host": {"hostname": "h"}, '
             '"site_cache": {"url": "%s"}}')
    assert parse_agent_frame(hello % "http://cache.plant-7:8900").site_cache.url == "http://cache.plant-7:8900"
    with pytest.raises(FrameError, match="site_cache.url"):
        parse_agent_frame(hello % "file:///etc/passwd")
    with pytest.raises(FrameError, match="bytes_served"):
        parse_agent_frame('{"type": "cache", "v": 1, "bytes_served": -1}')


def test_parse_listen():
    assert parse_listen(":8900") == ("0.0.0.0", 8900)
    assert parse_listen("127.0.0.1:8900") == ("127.0.0.1", 8900)
    for bad in ("8900", ":0", "host:http", ":70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_a_site_cut_off_from_the_server_still_pulls_what_its_cache_holds(site):
    mirror, _cache, base = site({"model.safetensors": (WEIGHTS, LFS)})
    with httpx2.Client(follow_redirects=True, timeout=30) as client:
        assert client.get(resolve(base, "model.safetensors"), headers=auth()).content == WEIGHTS
        mirror.close()  # the WAN goes down
        head = client.head(resolve(base, "model.safetensors"), headers=auth())
        assert head.status_code == 200 and head.headers["X-Linked-Etag"] == f'"{LFS}"'  # the commit's answer
        assert client.get(resolve(base, "model.safetensors"), headers=auth()).content == WEIGHTS
        # a moving revision is the server's to resolve: not answered from memory
        moving = client.head(f"{base}/hf/plant/tiny/resolve/main/model.safetensors", headers=auth())
        assert moving.status_code == 502
    assert len(mirror.gets) == 1

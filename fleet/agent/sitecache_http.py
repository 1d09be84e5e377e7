"""The site cache's HTTP face (fleet.agent.sitecache holds the store and the fetches): ``/hf/...`` for
huggingface_hub and the agent's fast path, ``/blobs/<etag>`` with Range and HEAD, following a fetch as it grows.
Nothing here imports Django."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from fleet.agent.sitecache import ETAG, Fetch, SiteCache, log
from fleet.lib.httprange import parse_range, send_file_headers

RESOLVE = re.compile(r"^/hf/(?P<rest>.+/resolve/.+)$")
BLOB = re.compile(r"^/blobs/(?P<etag>[0-9a-f]{40}|[0-9a-f]{64})$")
PASS_HEADERS = ("Content-Type", "X-Repo-Commit", "ETag", "X-Linked-Etag", "X-Linked-Size", "X-Error-Code",
                "X-Error-Message", "Accept-Ranges", "Content-Length", "Retry-After")
MAX_METADATA = 16 * 1024 * 1024  # bytes of a metadata answer passed through
STALL = 60.0  # seconds a follower waits for a fetch that stopped growing


class _Handler(BaseHTTPRequestHandler):
    server_version = "fleet-site-cache"
    protocol_version = "HTTP/1.1"
    timeout = 120
    cache: SiteCache

    def log_message(self, fmt: str, *args) -> None:
        log.debug("site cache: " + fmt, *args)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _plain(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        data = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Error-Message", message)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self, body: bool) -> None:
        cache = self.cache
        if not cache.key or not cache.mirror:
            return self._plain(503, "the site cache has not been welcomed by the server yet", {"Retry-After": "5"})
        if cache.neighbour(self.headers.get("Authorization")) is None:
            return self._plain(401, "Invalid credentials in Authorization header: present the site token")
        path = urlsplit(self.path).path
        if match := BLOB.match(path):
            return self._blob(match.group("etag"), body)
        if not path.startswith("/hf/") or ".." in path.split("/"):
            return self._plain(404, "not a mirror path")
        if RESOLVE.match(path) and body:
            return self._resolve_get()
        if body and not path.startswith("/hf/api/"):
            return self._plain(404, "not a mirror path")
        self._proxy("GET" if body else "HEAD")

    def _proxy(self, method: str) -> None:
        """Metadata and HEAD: the server's answer as is (bounded)."""
        import httpx2

        try:
            response = self.cache.upstream(method, self.path[len("/hf"):])
        except httpx2.HTTPError as exc:
            return self._plain(502, f"the server cannot be reached from the site cache: {exc}", {"Retry-After": "10"})
        data = b"" if method == "HEAD" else response.content[:MAX_METADATA]
        self.send_response(response.status_code)
        for name in PASS_HEADERS:
            if name in response.headers and name != "Content-Length":
                self.send_header(name, response.headers[name])
        self.send_header("Content-Length", response.headers.get("Content-Length", "0") if method == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _resolve_get(self) -> None:
        import httpx2

        rest = self.path[len("/hf"):]
        try:
            head = self.cache.upstream("HEAD", rest)
        except httpx2.HTTPError as exc:
            return self._plain(502, f"the server cannot be reached from the site cache: {exc}", {"Retry-After": "10"})
        if head.status_code != 200:
            return self._proxy_answer(head)
        etag = (head.headers.get("X-Linked-Etag") or head.headers.get("ETag") or "").strip('"').lower()
        try:
            size = int(head.headers.get("X-Linked-Size") or head.headers.get("Content-Length") or "")
        except ValueError:
            size = -1
        if not ETAG.match(etag) or size < 0:
            return self._plain(502, "the server's answer names no blob (etag/size)")
        self.cache.ensure(etag, size, self.cache.mirror + rest)
        self.send_response(302)
        self.send_header("Location", f"/blobs/{etag}")
        for name in ("X-Repo-Commit", "ETag", "X-Linked-Etag", "X-Linked-Size"):
            if name in head.headers:
                self.send_header(name, head.headers[name])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _proxy_answer(self, response) -> None:
        self.send_response(response.status_code)
        for name in PASS_HEADERS:
            if name in response.headers and name != "Content-Length":
                self.send_header(name, response.headers[name])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _blob(self, etag: str, body: bool) -> None:
        cache = self.cache
        final = cache.path(etag)
        with cache.lock:
            fetch = cache.fetches.get(etag)
        if fetch is None and not final.exists():
            return self._plain(404, "this blob is not in the site cache; ask for it through /hf/ first")
        size = fetch.size if fetch is not None else final.stat().st_size
        try:
            span = parse_range(self.headers.get("Range"), size)
        except ValueError:
            return self._plain(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
        start, length = send_file_headers(self, size, span, etag)
        if fetch is None:
            cache.stats.hits += 1
        else:
            cache.stats.misses += 1
        if not body or not length:
            return
        sent = self._send(etag, fetch, start, start + length)
        cache.stats.bytes_served += sent
        if sent < length:
            self.close_connection = True

    def _send(self, etag: str, fetch: Fetch | None, pos: int, end: int) -> int:
        """Bytes [pos, end) of the blob, following its fetch as the file grows; bytes sent."""
        start = pos
        final, partial = self.cache.path(etag), self.cache.path(etag).with_name(etag + ".partial")
        handle = None
        try:
            while pos < end:
                if fetch is not None and not fetch.done:
                    with fetch.grew:
                        grown_at, seen = time.monotonic(), fetch.written
                        while fetch.written <= pos and not fetch.done and not fetch.error:
                            fetch.grew.wait(1.0)
                            if fetch.written != seen:
                                grown_at, seen = time.monotonic(), fetch.written
                            elif time.monotonic() - grown_at > STALL:
                                return pos - start  # the fetch stalled: a short body, the client asks again
                        if fetch.error:
                            return pos - start  # the client sees a short body and asks again
                        available = fetch.size if fetch.done else fetch.written
                else:
                    available = end
                if handle is None:
                    try:
                        handle = open(final if final.exists() else partial, "rb")  # noqa: SIM115
                    except FileNotFoundError:
                        handle = open(final, "rb")  # noqa: SIM115 - renamed meanwhile
                count = min(available, end) - pos
                sent = self.connection.sendfile(handle, offset=pos, count=count)
                if not sent:
                    break
                pos += sent
        except (OSError, TimeoutError):
            pass
        finally:
            if handle is not None:
                handle.close()
        return pos - start


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def serve(cache: SiteCache, host: str, port: int) -> ThreadingHTTPServer:
    """Start the cache's HTTP server in a thread; the caller shuts it down."""
    handler = type("SiteCacheHandler", (_Handler,), {"cache": cache})
    server = _Server((host, port), handler)
    threading.Thread(target=server.serve_forever, name="fleet-site-cache", daemon=True).start()
    log.info("site cache listening on %s:%d", host, server.server_address[1])
    return server


def parse_listen(text: str) -> tuple[str, int]:
    """``:PORT`` or ``HOST:PORT`` → (host, port); ValueError when it is neither."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} must be :PORT or HOST:PORT")
    return (host.strip("[]") or "0.0.0.0"), int(port)  # noqa: S104 - the site's nodes dial it

"""The site cache: one agent per site serves the server's ``/hf`` mirror to its neighbours
(``fleet-agent run --site-cache :PORT``), so a model crosses the WAN once per site, not once per node.

- Metadata (``/hf/api/...``) and ``HEAD`` of ``resolve`` are passed to the server with this node's own
  credential; the answer (status, ``X-Repo-Commit``, ``ETag``, ``X-Linked-*``, ``X-Error-Code``) comes back as is.
- ``GET`` of ``resolve`` learns the file's etag and size from the server (``HEAD``), starts fetching the blob
  if it is not on disk (single-flight: one fetch per blob however many requests arrive) and redirects to
  ``/blobs/<etag>`` here, as the server redirects to its blob server.
- ``/blobs/<etag>`` honours ``Range`` and ``HEAD``, and follows a fetch in progress as its file grows, so
  neighbours get bytes while they arrive. A fetch hashes as it writes (sha256 for LFS blobs, git-sha1 for
  small files) and only a matching file becomes ``blobs/<etag>``; a killed fetch resumes with ``Range``.
- Neighbours authenticate with the site token their ``welcome`` carries (fleet.lib.sitetoken), never with
  their node secret; the cache checks it with the site key its own ``welcome`` carries.
Nothing here imports Django.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from fleet.agent.protocol import CacheReport
from fleet.lib import sitetoken

log = logging.getLogger("fleet.agent.sitecache")
ETAG = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
RESOLVE = re.compile(r"^/hf/(?P<rest>.+/resolve/.+)$")
BLOB = re.compile(r"^/blobs/(?P<etag>[0-9a-f]{40}|[0-9a-f]{64})$")
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
PASS_HEADERS = ("Content-Type", "X-Repo-Commit", "ETag", "X-Linked-Etag", "X-Linked-Size", "X-Error-Code",
                "X-Error-Message", "Accept-Ranges", "Content-Length", "Retry-After")
MAX_METADATA = 16 * 1024 * 1024  # bytes of a metadata answer passed through
STALL = 60.0  # seconds a follower waits for a fetch that stopped growing
PIECE = 1024 * 1024
PINNED = re.compile(r"/(resolve|revision|tree)/[0-9a-f]{40}(/|$|\?)")  # a commit's files never change
MAX_REMEMBERED = 4096


class _FetchFailed(Exception):
    pass


@dataclass
class Fetch:
    """One blob coming from the server; followers wait on ``grew``."""

    etag: str
    size: int
    url: str
    written: int = 0
    done: bool = False
    error: str = ""
    grew: threading.Condition = field(default_factory=threading.Condition)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_served: int = 0
    bytes_upstream: int = 0
    errors: int = 0


class SiteCache:
    """The blob store, the single-flight fetches and the upstream client of one site cache."""

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.token = token  # this node's own secret: how the cache reaches the server
        self.mirror = ""  # the server's /hf URL, from welcome
        self.key: str | None = None  # the site key, from welcome: verifies neighbours' tokens
        self.stats = CacheStats()
        self.lock = threading.Lock()
        self.fetches: dict[str, Fetch] = {}
        self._disk: tuple[float, int, int] = (0.0, 0, 0)
        self.remembered: dict[tuple[str, str], object] = {}  # the server's answers for commit-pinned paths

    # ---- what the agent reports --------------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(bytes, blobs) on disk, recounted at most every 5 s."""
        at, size, count = self._disk
        if time.monotonic() - at > 5:
            size = count = 0
            for entry in os.scandir(self.blobs):
                if entry.is_file():
                    size += entry.stat().st_size
                    count += ETAG.match(entry.name) is not None
            self._disk = (time.monotonic(), size, count)
        return size, count

    def fetching(self) -> int:
        with self.lock:
            return len(self.fetches)

    # ---- auth --------------------------------------------------------------------------------------

    def neighbour(self, authorization: str | None) -> int | None:
        token = (authorization or "")[7:] if (authorization or "").startswith("Bearer ") else ""
        return sitetoken.verify(self.key, token) if self.key and token else None

    # ---- upstream ----------------------------------------------------------------------------------

    def client(self, follow: bool = False):
        import httpx2

        return httpx2.Client(timeout=httpx2.Timeout(30.0, read=120.0), follow_redirects=follow)

    def upstream(self, method: str, path_and_query: str):
        """One metadata request to the server's mirror with this node's credential (no body streaming).

        The server decides (approval, revocation) whenever it can be reached. When it cannot, an answer it
        gave earlier for a commit-pinned path (immutable) is used again, so a site cut off from the server
        still pulls what its cache holds; anything else raises the transport error."""
        import httpx2

        pinned = PINNED.search(path_and_query) is not None
        try:
            with self.client() as client:
                response = client.request(method, self.mirror + path_and_query,
                                          headers={"Authorization": f"Bearer {self.token}"})
        except httpx2.TransportError:
            remembered = self.remembered.get((method, path_and_query)) if pinned else None
            if remembered is None:
                raise
            log.info("server unreachable: answering %s %s from the site cache's memory", method, path_and_query)
            return remembered
        if pinned and response.status_code == 200:
            with self.lock:
                self.remembered[(method, path_and_query)] = response
                while len(self.remembered) > MAX_REMEMBERED:
                    self.remembered.pop(next(iter(self.remembered)))
        return response

    # ---- blobs -------------------------------------------------------------------------------------

    def path(self, etag: str) -> Path:
        return self.blobs / etag

    def ensure(self, etag: str, size: int, url: str) -> Fetch | None:
        """None if the blob is on disk; else the one fetch of it, started if none runs (single-flight)."""
        if self.path(etag).exists():
            return None
        with self.lock:
            fetch = self.fetches.get(etag)
            if fetch is None:
                if self.path(etag).exists():
                    return None
                fetch = self.fetches[etag] = Fetch(etag=etag, size=size, url=url)
                threading.Thread(target=self._fetch, args=(fetch,), name=f"fleet-cache-{etag[:8]}",
                                 daemon=True).start()
            return fetch

    def _fetch(self, fetch: Fetch) -> None:
        try:
            self._download(fetch)
            with fetch.grew:
                fetch.done = True
            log.info("site cache stored %s (%d bytes)", fetch.etag[:12], fetch.size)
        except Exception as exc:
            self.stats.errors += 1
            log.warning("site cache could not fetch %s: %s", fetch.etag[:12], exc)
            with fetch.grew:
                fetch.error = str(exc) or type(exc).__name__
        finally:
            with self.lock:
                self.fetches.pop(fetch.etag, None)
            with fetch.grew:
                fetch.grew.notify_all()

    def _hasher(self, etag: str, size: int):
        if len(etag) == 64:
            return hashlib.sha256()
        digest = hashlib.sha1()  # noqa: S324 - git's blob id, what the mirror's etag is for small files
        digest.update(f"blob {size}\0".encode())
        return digest

    def _download(self, fetch: Fetch) -> None:
        partial = self.path(fetch.etag).with_name(fetch.etag + ".partial")
        digest = self._hasher(fetch.etag, fetch.size)
        start = 0
        if partial.exists() and partial.stat().st_size <= fetch.size:  # a killed cache resumes
            with open(partial, "rb") as handle:
                while piece := handle.read(PIECE):
                    digest.update(piece)
                    start += len(piece)
        headers = {"Authorization": f"Bearer {self.token}"}  # dropped on the redirect to another origin
        if start:
            headers["Range"] = f"bytes={start}-"
        fetch.written = start
        with self.client(follow=True) as client, client.stream("GET", fetch.url, headers=headers) as response:
            if start and response.status_code == 200:
                start = fetch.written = 0
                digest = self._hasher(fetch.etag, fetch.size)
            elif response.status_code not in (200, 206) or (start and response.status_code != 206):
                raise _FetchFailed(f"the server answered {response.status_code}")
            with open(partial, "r+b" if start else "wb") as out:
                out.truncate(start)
                out.seek(start)
                for piece in response.iter_raw():
                    if fetch.written + len(piece) > fetch.size:
                        raise _FetchFailed("the server sent more bytes than the file has")
                    out.write(piece)
                    out.flush()
                    digest.update(piece)
                    self.stats.bytes_upstream += len(piece)
                    with fetch.grew:
                        fetch.written += len(piece)
                        fetch.grew.notify_all()
        if fetch.written != fetch.size:
            raise _FetchFailed(f"the body ended at {fetch.written} of {fetch.size} bytes")
        if digest.hexdigest() != fetch.etag:
            partial.unlink(missing_ok=True)
            raise _FetchFailed(f"checksum mismatch (got {digest.hexdigest()[:16]}…); the partial file was deleted")
        os.replace(partial, self.path(fetch.etag))


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of one ``bytes=`` range, None without one; ValueError when unsatisfiable."""
    if not header:
        return None
    match = RANGE.match(header.strip())
    if not match or not (match.group(1) or match.group(2)):
        raise ValueError(header)
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    else:
        start, end = max(0, size - int(match.group(2))), size - 1
    if start >= size or start > end:
        raise ValueError(header)
    return start, end


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
        start, end = span if span else (0, size - 1)
        length = max(0, end - start + 1)
        self.send_response(206 if span else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if fetch is None:
            cache.stats.hits += 1
        else:
            cache.stats.misses += 1
        if not body or not length:
            return
        sent = self._send(etag, fetch, start, end + 1)
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


def cache_report(cache: SiteCache) -> CacheReport:
    """The frame the cache agent sends every few seconds (counters since the agent started)."""
    size, count = cache.usage()
    stats = cache.stats
    return CacheReport(type="cache", disk_bytes=size, blobs=count, hits=stats.hits, misses=stats.misses,
                       bytes_served=stats.bytes_served, bytes_upstream=stats.bytes_upstream,
                       fetching=cache.fetching(), errors=stats.errors)

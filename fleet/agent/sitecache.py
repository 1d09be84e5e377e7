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
This module holds the store, the fetches and the upstream client; fleet.agent.sitecache_http the HTTP server.
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
from pathlib import Path

from fleet.agent.protocol import CacheReport
from fleet.lib import sitetoken

log = logging.getLogger("fleet.agent.sitecache")
ETAG = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
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


def cache_report(cache: SiteCache) -> CacheReport:
    """The frame the cache agent sends every few seconds (counters since the agent started)."""
    size, count = cache.usage()
    stats = cache.stats
    return CacheReport(type="cache", disk_bytes=size, blobs=count, hits=stats.hits, misses=stats.misses,
                       bytes_served=stats.bytes_served, bytes_upstream=stats.bytes_upstream,
                       fetching=cache.fetching(), errors=stats.errors)

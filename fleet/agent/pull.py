"""Large model files onto the node at disk speed, verified (the deployer's fast path for big files).

Each file is fetched as fixed-size ranges by ``ranges`` workers sharing one kept httpx2 client, written with
``os.pwrite`` into a preallocated ``blobs/<sha256>.fleet-partial``. A sidecar (``….fleet-ranges``, JSON) names
the ranges already written, so a killed agent fetches only the missing ones. A hashing thread reads the ranges
back in order as they land (from the page cache; hashlib releases the GIL) so the file's sha256 is ready soon
after its last byte. Only a file whose sha256 matches is renamed to ``blobs/<sha256>``, where huggingface_hub
looks for it; a mismatch is fetched again, range by range, rewriting (and logging) the ranges whose bytes
differ, and after ``MAX_PASSES`` the file fails and is deleted. No file is ever held in memory: bytes move in
the client's 64 KiB reads. Nothing here imports Django.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from fleet.agent.pullconfig import PullConfig, RateCap

log = logging.getLogger("fleet.agent.pull")
MiB = 1024 * 1024
SIDECAR = ".fleet-ranges"
MAX_PASSES = 3  # full fetches of one file whose sha256 keeps failing before the deploy fails
ATTEMPTS = 8  # tries of one range (connection errors, short bodies, 503) before the file fails
HASH_BUFFER = 4 * MiB
CACHE_GRACE = 100  # retries of one range waiting on the site cache's fetch (2 minutes each at most)


class PullError(Exception):
    """A file could not be fetched; the message is for the operator."""


class CacheDown(PullError):
    """The site cache refused or dropped a connection: the deployer pulls from the server instead."""


@dataclass
class FileSpec:
    """One file of the version: where the mirror serves it and where its verified blob goes."""

    path: str
    url: str
    size: int
    sha256: str
    final: Path
    token: str | None = None  # None: the node's secret (the server); a site token for the site cache
    via_cache: bool = False  # the site cache: a connection it refuses or drops fails the file at once

    @property
    def partial(self) -> Path:
        return self.final.with_name(self.final.name + ".fleet-partial")

    @property
    def sidecar(self) -> Path:
        return self.final.with_name(self.final.name + SIDECAR)


@dataclass
class _Job:
    spec: FileSpec
    chunk: int
    fd: int = -1
    done: set[int] = field(default_factory=set)
    inflight: dict[int, int] = field(default_factory=dict)
    passes: int = 1
    repair: bool = False
    differed: set[int] = field(default_factory=set)
    verified: bool = False
    source: tuple[str, dict[str, str]] | None = None
    source_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def count(self) -> int:
        return max(1, -(-self.spec.size // self.chunk))

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk
        return start, min(self.spec.size, start + self.chunk) - 1

    def bytes_done(self) -> int:
        return sum(self.span(i)[1] - self.span(i)[0] + 1 for i in list(self.done)) + sum(list(self.inflight.values()))


_blob_locks: dict[str, threading.Lock] = {}
_blob_locks_guard = threading.Lock()


def _blob_lock(path: Path) -> threading.Lock:
    with _blob_locks_guard:
        return _blob_locks.setdefault(str(path), threading.Lock())


def ranges_written(final: Path, size: int) -> int | None:
    """Bytes of a fast-path download already on disk (from its sidecar), or None if there is none."""
    try:
        state = json.loads(final.with_name(final.name + SIDECAR).read_text(encoding="utf-8"))
        chunk = int(state["chunk"])
        return sum(min(size, (i + 1) * chunk) - i * chunk for i in state["done"] if 0 <= i * chunk < size)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Puller:
    """The node's fast path: one kept httpx2 client, at most ``ranges`` Range requests at once and one rate
    cap for every download of this agent (a deployer holds one Puller; each deploy makes a PullRun)."""

    def __init__(self, config: PullConfig, token: str) -> None:
        self.config = config
        self.token = token
        self.cap = RateCap(config.rate)
        self.slots = threading.BoundedSemaphore(config.ranges)

    def client(self):
        """An httpx2 client for one run: its connections are kept across that run's ranges and closed after
        it, so idle ones never hold the blob server's connection slots."""
        import httpx2

        timeout = httpx2.Timeout(30.0, read=120.0)  # the blob server follows a pull-through for up to 60 s
        limits = httpx2.Limits(max_connections=self.config.ranges, max_keepalive_connections=self.config.ranges)
        return httpx2.Client(timeout=timeout, limits=limits, follow_redirects=False)

    def prepare(self, specs: list[FileSpec]) -> PullRun:
        return PullRun(self, specs)


class PullRun:
    """One deploy's files: ``run()`` fetches and verifies them (in a thread); ``bytes_done()`` is its progress."""

    def __init__(self, puller: Puller, specs: list[FileSpec]) -> None:
        self.puller = puller
        self.config = puller.config
        self.cap = puller.cap
        self.client = None
        self.specs = specs
        self.jobs: list[_Job] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.work: queue.Queue[tuple[_Job, int] | None] = queue.Queue()
        self.changed = threading.Condition()

    def bytes_done(self) -> int:
        """Bytes of this run's files on disk so far: verified blobs, written ranges (resumed ones included)."""
        jobs = {id(job.spec): job for job in list(self.jobs)}
        done = 0
        for spec in self.specs:
            job = jobs.get(id(spec))
            if job is not None:
                done += min(spec.size, job.bytes_done())
            elif spec.final.exists():
                done += spec.size
            else:
                done += ranges_written(spec.final, spec.size) or 0
        return done

    def verified(self) -> set[str]:
        """Paths whose blob this run fetched and proved (sha256) into place."""
        finals = {job.spec.final for job in self.jobs if job.verified}
        return {spec.path for spec in self.specs if spec.final in finals}

    def retarget(self, url_of: Callable[[str], str], token: str | None, via_cache: bool) -> None:
        """Fetch from another mirror (the site cache, or the server after it failed); written ranges stay."""
        for spec in self.specs:
            spec.url, spec.token, spec.via_cache = url_of(spec.path), token, via_cache

    def run(self) -> None:
        """Fetch and verify the files (skipping blobs already in place); raise PullError or the mirror's error."""
        self.stop, self.errors, self.work = threading.Event(), [], queue.Queue()
        # one job per blob (two paths may hold the same bytes); locks taken in one order by every run
        specs = sorted({spec.final: spec for spec in self.specs if not spec.final.exists()}.values(),
                       key=lambda spec: str(spec.final))
        locks = [_blob_lock(spec.final) for spec in specs]
        held = []
        try:
            for lock in locks:  # two deploys sharing a blob: the second waits, then finds it in place
                lock.acquire()
                held.append(lock)
            self.jobs = [self._open(spec) for spec in specs if not spec.final.exists()]
            if not self.jobs:
                return
            self.client = self.puller.client()
            for job in self.jobs:
                for index in range(job.count):
                    if index not in job.done:
                        self.work.put((job, index))
            workers = [threading.Thread(target=self._worker, name=f"fleet-pull-{n}", daemon=True)
                       for n in range(self.config.ranges)]
            for worker in workers:
                worker.start()
            try:
                self._hash_all()
            except BaseException as exc:
                self._fail(exc)
            for _ in workers:
                self.work.put(None)
            for worker in workers:
                worker.join()
            if self.errors:
                raise self.errors[0]
        finally:
            if self.client is not None:
                self.client.close()
                self.client = None
            for job in self.jobs:
                if job.fd >= 0:
                    os.close(job.fd)
                    job.fd = -1
            for lock in held:
                lock.release()

    def _fail(self, exc: BaseException) -> None:
        with self.changed:
            self.errors.append(exc)
            self.stop.set()
            self.changed.notify_all()

    # ---- files and their sidecars ----------------------------------------------------------------------

    def _open(self, spec: FileSpec) -> _Job:
        spec.final.parent.mkdir(parents=True, exist_ok=True)
        job = _Job(spec=spec, chunk=self.config.chunk)
        try:
            state = json.loads(spec.sidecar.read_text(encoding="utf-8"))
            if (state.get("size"), state.get("sha256")) == (spec.size, spec.sha256) and \
                    spec.partial.stat().st_size == spec.size:
                job.chunk = int(state["chunk"])
                job.done = {int(i) for i in state["done"] if 0 <= int(i) < job.count}
        except (OSError, ValueError, KeyError, TypeError):
            job.done = set()
        job.fd = os.open(spec.partial, os.O_RDWR | os.O_CREAT, 0o644)
        if not job.done:
            os.ftruncate(job.fd, 0)  # a stale or foreign partial file: start it over
            try:
                os.posix_fallocate(job.fd, 0, spec.size)  # reserves the disk space up front
            except OSError:
                pass  # a file system without fallocate: ftruncate below still sizes the file
            os.ftruncate(job.fd, spec.size)
            self._save(job)
        else:
            log.info("resuming %s: %d of %d ranges already on disk", spec.path, len(job.done), job.count)
        return job

    def _save(self, job: _Job) -> None:
        """The sidecar, replaced atomically (no fsync: a range it names that did not reach the disk fails the
        sha256 check and is fetched again)."""
        data = json.dumps({"size": job.spec.size, "sha256": job.spec.sha256, "chunk": job.chunk,
                           "done": sorted(job.done)})
        tmp = job.spec.sidecar.with_name(job.spec.sidecar.name + ".tmp")
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, job.spec.sidecar)

    # ---- range workers ---------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            item = self.work.get()
            if item is None or self.stop.is_set():
                return
            job, index = item
            try:
                with self.puller.slots:
                    finished = self._range(job, index)
            except BaseException as exc:
                self._fail(exc)
                return
            if not finished:
                return
            with self.changed:
                job.inflight.pop(index, None)
                job.done.add(index)
                self._save(job)
                self.changed.notify_all()

    def _source(self, job: _Job, stale: tuple[str, dict[str, str]] | None = None) -> tuple[str, dict[str, str]]:
        """(URL, headers) the file's bytes come from: the mirror's redirect target (a signed blob URL, no
        token, as huggingface_hub does), or the mirror URL itself when it answers with the bytes (nginx)."""
        from huggingface_hub.utils import hf_raise_for_status

        with job.source_lock:
            if job.source is not None and job.source is not stale:
                return job.source
            token = self.puller.token if job.spec.token is None else job.spec.token
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            response = self.client.get(job.spec.url, headers={**auth, "Range": "bytes=0-0"})
            if response.is_redirect and response.headers.get("Location"):
                target = urljoin(job.spec.url, response.headers["Location"])
                same_origin = urlsplit(target)[:2] == urlsplit(job.spec.url)[:2]
                job.source = (target, auth if same_origin else {})
            elif response.status_code in (200, 206):
                job.source = (job.spec.url, auth)
            else:
                hf_raise_for_status(response)
                raise PullError(f"{job.spec.path}: the mirror answered {response.status_code}")
            return job.source

    def _range(self, job: _Job, index: int) -> bool:
        import httpx2

        start, end = job.span(index)
        expected = f"bytes {start}-{end}/{job.spec.size}"
        source, problem = None, ""
        attempt = grace = 0  # grace: waits on the site cache's own fetch, which do not count as failures
        while attempt < ATTEMPTS:
            if self.stop.is_set():
                return False
            if attempt:
                time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
            attempt += 1
            try:
                source = self._source(job, source if problem == "expired" else None)
                url, headers = source
                with self.client.stream("GET", url, headers={**headers, "Range": f"bytes={start}-{end}"}) as response:
                    status = response.status_code
                    if status in (401, 403) and not headers:  # the signed URL expired: ask the mirror again
                        problem = "expired"
                        continue
                    if status in (429, 500, 502, 503, 504):
                        problem = f"the server answered {status}"
                        continue
                    if status != 206 or response.headers.get("Content-Range") != expected:
                        from huggingface_hub.utils import hf_raise_for_status

                        hf_raise_for_status(response)
                        raise PullError(f"{job.spec.path}: asked for {expected}, got {status} "
                                        f"{response.headers.get('Content-Range', '(no Content-Range)')}")
                    pos = self._receive(job, index, response, start, end)
                if pos == end + 1:
                    return True
                problem = f"the body ended at {pos - start} of {end - start + 1} bytes"
                if job.spec.via_cache and pos > start and grace < CACHE_GRACE:
                    attempt, grace = attempt - 1, grace + 1  # the cache stalled after progress: not a failure
            except (httpx2.ConnectError, httpx2.RemoteProtocolError, httpx2.ReadError) as exc:
                if job.spec.via_cache:
                    raise CacheDown(f"{job.spec.path}: the site cache failed ({type(exc).__name__}: {exc})") from None
                problem = f"{type(exc).__name__}: {exc}"
            except httpx2.TransportError as exc:
                if job.spec.via_cache and isinstance(exc, httpx2.ReadTimeout) and grace < CACHE_GRACE:
                    attempt, grace = attempt - 1, grace + 1  # waiting on the cache reaching this range
                problem = f"{type(exc).__name__}: {exc}"
            job.inflight[index] = 0
            log.info("%s bytes %d-%d: %s; retrying", job.spec.path, start, end, problem)
        raise PullError(f"{job.spec.path}: bytes {start}-{end} failed {ATTEMPTS} times ({problem})")

    def _receive(self, job: _Job, index: int, response, start: int, end: int) -> int:
        pos = start
        for piece in response.iter_raw():
            if self.stop.is_set():
                break
            if pos + len(piece) > end + 1:
                raise PullError(f"{job.spec.path}: the server sent more than the {end - start + 1} bytes asked for")
            if job.repair and os.pread(job.fd, len(piece), pos) != piece:
                job.differed.add(index)
            view = memoryview(piece)
            offset = pos
            while view:
                written = os.pwrite(job.fd, view, offset)
                view, offset = view[written:], offset + written
            pos += len(piece)
            job.inflight[index] = pos - start
            self.cap.take(len(piece))
        return pos

    # ---- verification ------------------------------------------------------------------------------------

    def _hash_all(self) -> None:
        for job in self.jobs:
            while True:
                digest = self._hash(job)
                if digest is None:
                    return  # stopped: a worker failed
                if digest == job.spec.sha256:
                    break
                self._mismatch(job, digest)
            os.close(job.fd)
            job.fd = -1
            os.replace(job.spec.partial, job.spec.final)
            job.spec.sidecar.unlink(missing_ok=True)
            job.verified = True
            if job.differed:
                log.warning("%s: range(s) %s had wrong bytes and were fetched again", job.spec.path,
                            ", ".join(f"{job.span(i)[0]}-{job.span(i)[1]}" for i in sorted(job.differed)))

    def _hash(self, job: _Job) -> str | None:
        """sha256 of the file, reading each range as soon as it is written (in order)."""
        digest = hashlib.sha256()
        buffer = bytearray(HASH_BUFFER)
        view = memoryview(buffer)
        for index in range(job.count):
            with self.changed:
                while index not in job.done and not self.stop.is_set():
                    self.changed.wait(1.0)
            if self.stop.is_set():
                return None
            pos, end = job.span(index)
            while pos <= end:
                got = os.preadv(job.fd, [view[: min(HASH_BUFFER, end + 1 - pos)]], pos)
                if not got:
                    raise PullError(f"{job.spec.path}: the partial file is shorter than expected")
                digest.update(view[:got])
                pos += got
        return digest.hexdigest()

    def _mismatch(self, job: _Job, digest: str) -> None:
        if job.passes >= MAX_PASSES:
            os.close(job.fd)
            job.fd = -1
            job.spec.partial.unlink(missing_ok=True)
            job.spec.sidecar.unlink(missing_ok=True)
            raise PullError(f"{job.spec.path} sha256 mismatch after {MAX_PASSES} downloads (expected "
                            f"{job.spec.sha256[:16]}…, got {digest[:16]}…); the file was deleted")
        log.warning("%s sha256 mismatch (expected %s…, got %s…); fetching every range again and rewriting the "
                    "ones that differ", job.spec.path, job.spec.sha256[:16], digest[:16])
        job.passes += 1
        job.repair = True
        with self.changed:
            job.done.clear()
            self._save(job)
        for index in range(job.count):
            self.work.put((job, index))


def file_specs(entries: list[dict], url_of: Callable[[str], str], blob_of: Callable[[str], Path]) -> list[FileSpec]:
    """The fast-path files of a manifest (callers pick which entries), as FileSpecs."""
    specs = []
    for entry in entries:
        lfs = entry.get("lfs") or {}
        sha256 = str(lfs.get("sha256") or lfs.get("oid") or "")
        specs.append(FileSpec(path=entry["path"], url=url_of(entry["path"]), size=int(entry["size"]),
                              sha256=sha256, final=blob_of(sha256)))
    return specs

"""An HF-compatible upstream served by the tests themselves (no internet): model_info with file metadata,
auth-check, tree, resolve with Range. It records every body fetch per file, so tests can prove that each
blob was fetched from upstream once."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def pointer_oid(sha256: str, size: int) -> str:
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    return git_oid(pointer)


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    revisions: dict[str, str] = field(default_factory=dict)  # name -> sha
    gated: bool = False
    token: str = ""  # the token that has access when gated

    @staticmethod
    def from_folder(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.fetches: Counter = Counter()  # (repo, path) -> body GETs
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of ranged GETs
        self.bytes_sent = 0
        self.delay_per_mb = 0.0  # seconds of sleep per MiB sent, to make downloads slow enough to interrupt
        self.failures: Counter = Counter()  # file path -> body GETs still to answer with a transient 503
        self.failed: Counter = Counter()  # file path -> transient 503s answered
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], revision: str = "main", **kwargs) -> str:
        sha = hashlib.sha1(repr(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()
                           ).hexdigest()
        repo = self.repos.setdefault(repo_id, FakeRepo(files={}, **kwargs))
        repo.files.update({f"{sha}/{path}": data for path, data in files.items()})
        repo.revisions[revision] = sha
        return sha

    def files_at(self, repo_id: str, sha: str) -> dict[str, bytes]:
        prefix = f"{sha}/"
        return {k[len(prefix):]: v for k, v in self.repos[repo_id].files.items() if k.startswith(prefix)}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, data, code: str | None = None) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if code:
                    self.send_header("X-Error-Code", code)
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, repo_id: str, revision: str | None):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._json(404, {"error": "Repository not found"}, "RepoNotFound")
                    return None, None
                sha = revision if revision in repo.revisions.values() else repo.revisions.get(revision or "main")
                if sha is None:
                    self._json(404, {"error": "Invalid rev id"}, "RevisionNotFound")
                    return None, None
                return repo, sha

            def _authorized(self, repo: FakeRepo) -> bool:
                if not repo.gated:
                    return True
                token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                if token and token == repo.token:
                    return True
                self._json(403 if token else 401, {"error": "gated"}, "GatedRepo")
                return False

            def do_HEAD(self) -> None:
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
                    repo, sha = self._repo(m.group(1), m.group(2))
                    if repo is None:
                        return
                    siblings = []
                    for name, data in sorted(hub.files_at(m.group(1), sha).items()):
                        sibling = {"rfilename": name, "size": len(data)}
                        if name.endswith(LFS_SUFFIXES):
                            digest = hashlib.sha256(data).hexdigest()
                            sibling["blobId"] = pointer_oid(digest, len(data))
                            sibling["lfs"] = {"sha256": digest, "size": len(data), "pointerSize": 134}
                        else:
                            sibling["blobId"] = git_oid(data)
                        siblings.append(sibling)
                    return self._json(200, {"id": m.group(1), "sha": sha, "siblings": siblings,
                                            "gated": "manual" if repo.gated else False, "private": False})
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/auth-check", path):
                    repo, _ = self._repo(m.group(1), None)
                    if repo is not None and self._authorized(repo):
                        self._json(200, {})
                    return
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    repo, sha = self._repo(m.group(1), m.group(2))
                    if repo is None or not self._authorized(repo):
                        return
                    data = hub.files_at(m.group(1), sha).get(m.group(3))
                    if data is None:
                        return self._json(404, {"error": "Entry not found"}, "EntryNotFound")
                    if body:
                        with hub.lock:
                            failing = hub.failures[m.group(3)] > 0
                            if failing:
                                hub.failures[m.group(3)] -= 1
                                hub.failed[m.group(3)] += 1
                        if failing:
                            return self._json(503, {"error": "fake hub: temporarily unavailable"})
                    return self._send_file(m.group(1), m.group(3), sha, data, body)
                self._json(404, {"error": f"fake hub: no route {path}"})

            def _send_file(self, repo_id: str, name: str, sha: str, data: bytes, body: bool) -> None:
                start, end = 0, len(data) - 1
                ranged = self.headers.get("Range")
                if ranged:
                    first, last = ranged.removeprefix("bytes=").split("-")
                    start = int(first)
                    end = int(last) if last else len(data) - 1
                self.send_response(206 if ranged else 200)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("X-Repo-Commit", sha)
                lfs = name.endswith(LFS_SUFFIXES)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest() if lfs else git_oid(data)}"')
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                with hub.lock:
                    hub.fetches[(repo_id, name)] += 1
                    if ranged:
                        hub.ranges.append((name, ranged))
                view = memoryview(data)[start:end + 1]
                step = 256 * 1024
                try:
                    for offset in range(0, len(view), step):
                        self.wfile.write(view[offset:offset + step])
                        with hub.lock:
                            hub.bytes_sent += min(step, len(view) - offset)
                        if hub.delay_per_mb:
                            time.sleep(hub.delay_per_mb * step / (1024 * 1024))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

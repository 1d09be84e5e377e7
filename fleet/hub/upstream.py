"""Talking to the upstream hub (FLEET_HF_UPSTREAM) with huggingface_hub: resolve a revision into a manifest,
and download one file into the content store (resumable, verified).

The token (per-model, else FLEET_HF_TOKEN) is used only here, on the server; it is never sent anywhere else.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2
from django.conf import settings
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers, filter_repo_objects

from fleet.hub import store
from fleet.hub.entries import FileEntry
from fleet.lib.errors import FieldError

log = logging.getLogger(__name__)

# What a runtime needs: weights as safetensors, configs, tokenizer files and the chat template.
DEFAULT_ALLOW_PATTERNS = [
    "*.safetensors", "*.json", "tokenizer.model", "*.tiktoken", "*.spm", "spiece.model", "vocab.txt", "merges.txt",
    "*.jinja", "*.py",
]
LEGACY_WEIGHTS = ["*.bin", "*.pth", "*.pt"]  # served only when a revision has no safetensors
SKIP_WITH_SAFETENSORS = ["original/*", "*.bin", "*.pth", "*.pt"]
RESOLVE_TIMEOUT = 20.0


class UpstreamError(FieldError):
    """A failure talking to the upstream hub, with the form field it belongs to and a clear message."""

    def __init__(self, field: str, message: str, code: str = "error"):
        super().__init__(field, message)
        self.code = code


@dataclass(frozen=True)
class Resolved:
    repo_id: str
    revision: str
    sha: str
    entries: list[FileEntry]
    skipped: list[str]
    gated: bool

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.entries)


def endpoint() -> str:
    return settings.FLEET_HF_UPSTREAM


def effective_token(model_token: str = "") -> str:
    return model_token or settings.FLEET_HF_TOKEN


def _api(token: str) -> HfApi:
    # token=False, not None: never fall back to a token saved on the server by `hf auth login`.
    return HfApi(endpoint=endpoint(), token=token or False)


def select_files(paths: list[str], allow_patterns: list[str] | None) -> tuple[list[str], list[str]]:
    """(kept, skipped) paths: the operator's patterns, else the default set (legacy weights only without
    safetensors)."""
    if allow_patterns:
        kept = list(filter_repo_objects(paths, allow_patterns=allow_patterns))
    else:
        has_safetensors = any(path.endswith(".safetensors") for path in paths)
        if has_safetensors:
            kept = list(filter_repo_objects(paths, allow_patterns=DEFAULT_ALLOW_PATTERNS,
                                            ignore_patterns=SKIP_WITH_SAFETENSORS))
        else:
            kept = list(filter_repo_objects(paths, allow_patterns=DEFAULT_ALLOW_PATTERNS + LEGACY_WEIGHTS))
    kept_set = set(kept)
    return sorted(kept), sorted(path for path in paths if path not in kept_set)


def explain(error: Exception, repo_id: str, revision: str, token: str) -> UpstreamError:
    """Turn a huggingface_hub / network error into a message an operator can act on."""
    where = endpoint()
    if isinstance(error, GatedRepoError):
        hint = ("the token in use has not been granted access; accept the licence on the hub with that account"
                if token else "add a token with access (the per-model token field or FLEET_HF_TOKEN)")
        return UpstreamError("token", f"{repo_id} is a gated repository on {where}: {hint}", "gated")
    if isinstance(error, RepositoryNotFoundError):
        return UpstreamError("repo", f"repository {repo_id} was not found on {where} (check the spelling; a "
                                     "private repository also needs a token with access)", "repo_not_found")
    if isinstance(error, RevisionNotFoundError):
        return UpstreamError("revision", f"revision {revision!r} was not found in {repo_id}; give a branch, a tag "
                                         "or a 40-hex commit sha", "revision_not_found")
    if isinstance(error, OfflineModeIsEnabled):
        return offline_error()
    if isinstance(error, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError, OSError)) and \
            not isinstance(error, HfHubHTTPError):
        return UpstreamError("repo", f"cannot reach the upstream hub at {where} ({type(error).__name__}: {error}). "
                                     "Check the network or FLEET_HF_UPSTREAM; an air-gapped site sets "
                                     "FLEET_HF_OFFLINE=1 and uses manage.py importmodel", "unreachable")
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else "?"
        if status == 401:
            return UpstreamError("token", f"{where} refused the token (HTTP 401): check the per-model token or "
                                          "FLEET_HF_TOKEN", "unauthorized")
        return UpstreamError("repo", f"the upstream hub answered HTTP {status} for {repo_id}@{revision}; try "
                                     "again later", "upstream_error")
    return UpstreamError("repo", f"resolving {repo_id}@{revision} failed: {type(error).__name__}: {error}", "error")


def offline_error() -> UpstreamError:
    return UpstreamError("repo", "Fleet is offline (FLEET_HF_OFFLINE=1) and never contacts the upstream hub: bring "
                                 "the model in with `python manage.py importmodel PATH --repo ORG/NAME --revision "
                                 "NAME`", "offline")


def resolve(repo_id: str, revision: str, token: str = "", allow_patterns: list[str] | None = None) -> Resolved:
    """Pin ``revision`` to a commit and list the files to serve. Raises UpstreamError."""
    if settings.FLEET_HF_OFFLINE:
        raise offline_error()
    token = effective_token(token)
    api = _api(token)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=RESOLVE_TIMEOUT)
        gated = bool(getattr(info, "gated", False))
        if gated:
            api.auth_check(repo_id)  # metadata of a gated repo is public; its files are not
    except Exception as error:  # every failure becomes a message naming the field; see explain()
        raise explain(error, repo_id, revision, token) from None
    sha = info.sha or ""
    if not store.SHA.match(sha):
        raise UpstreamError("revision", f"the upstream hub gave no commit sha for {repo_id}@{revision}")
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    kept, skipped = select_files(list(siblings), allow_patterns)
    entries = []
    for path in kept:
        sibling = siblings[path]
        lfs = sibling.lfs
        entries.append(FileEntry(path=path, size=int(sibling.size if sibling.size is not None else -1),
                                 oid=(sibling.blob_id or "").lower(),
                                 lfs_sha256=(lfs.sha256.lower() if lfs else None)))
    return Resolved(repo_id=repo_id, revision=revision, sha=sha, entries=entries, skipped=skipped, gated=gated)


class _CountingFile:
    """The partial file handed to http_get: counts bytes and calls ``progress`` at most every second."""

    def __init__(self, handle, start: int, progress: Callable[[int], None]):
        self.handle = handle
        self.done = start
        self.progress = progress
        self.last = time.monotonic()

    def write(self, data: bytes) -> int:
        written = self.handle.write(data)
        self.done += len(data)
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            self.progress(self.done)
        return written

    def seek(self, *args):
        return self.handle.seek(*args)

    def tell(self) -> int:
        return self.handle.tell()

    def truncate(self, *args):
        result = self.handle.truncate(*args)
        self.done = self.handle.tell()
        return result

    def flush(self) -> None:
        self.handle.flush()


def download(repo_id: str, sha: str, path: str, size: int, digest: str, token: str,
             progress: Callable[[int], None]) -> None:
    """Fetch one file into ``<digest>.partial`` (resuming what is there), verify it, rename it into place.

    Raises UpstreamError (the partial file is kept for a resume unless its bytes proved wrong).
    """
    if settings.FLEET_HF_OFFLINE:
        raise offline_error()
    partial = store.partial_path(digest)
    partial.parent.mkdir(parents=True, exist_ok=True)
    start = partial.stat().st_size if partial.exists() else 0
    if start > size:
        partial.unlink()
        start = 0
    url = hf_hub_url(repo_id, path, revision=sha, endpoint=endpoint())
    headers = build_hf_headers(token=effective_token(token) or False)
    try:
        # Unbuffered: every chunk reaches the file at once, so the blob server can stream it onward.
        with open(partial, "ab", buffering=0) as handle:
            http_get(url, _CountingFile(handle, start, progress), resume_size=start, headers=headers,
                     expected_size=size, displayed_filename=path)
    except Exception as error:
        raise explain(error, repo_id, sha, token) from None
    _verify_and_install(partial, digest, size, path)


def _verify_and_install(partial: Path, digest: str, size: int, path: str) -> None:
    actual_size = partial.stat().st_size
    if actual_size != size:
        raise UpstreamError("repo", f"{path}: upstream sent {actual_size} bytes, the manifest says {size}")
    actual = store.digest_of(partial, digest)
    if actual != digest:
        partial.unlink()
        raise UpstreamError("repo", f"{path}: checksum mismatch (expected {digest}, got {actual}); the download "
                                    "was discarded", "checksum")
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, store.blob_path(digest))

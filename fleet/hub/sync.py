"""Fetching blobs from upstream into the store: exactly one download per blob across every process.

A download starts with a compare-and-set claim on the Blob row (a random token and a lease). The holder
renews the lease as bytes arrive; a holder that died stops renewing and its claim can be taken over, and
the new holder resumes from the partial file. Sync jobs (the engine's `hub-sync` task) and pull-through
requests from the mirror both go through `fetch_blob`, so they never fetch the same blob twice.
"""

from __future__ import annotations

import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from fleet.hub import catalog, store, upstream
from fleet.hub.models import ApprovalState, Blob, BlobState, SourceKind, VersionFile

log = logging.getLogger(__name__)
RENEW_EVERY = 5.0

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_queued: set[int] = set()  # blob ids submitted in this process and not finished


def claim(blob_id: int) -> str | None:
    """Take the download of a blob: a token if this caller won, None if it is present or someone else has it."""
    token = secrets.token_hex(16)
    now = timezone.now()
    lease = now + timedelta(seconds=settings.FLEET_HUB_LEASE)
    won = Blob.objects.filter(pk=blob_id).filter(
        Q(state=BlobState.MISSING) | Q(state=BlobState.DOWNLOADING, lease_until__lt=now)
    ).update(state=BlobState.DOWNLOADING, claim_token=token, lease_until=lease, error="")
    return token if won else None


def _renew(blob_id: int, token: str, done: int) -> bool:
    lease = timezone.now() + timedelta(seconds=settings.FLEET_HUB_LEASE)
    return bool(Blob.objects.filter(pk=blob_id, claim_token=token, state=BlobState.DOWNLOADING).update(
        lease_until=lease, bytes_done=done))


class _LostClaim(Exception):
    pass


def fetch_blob(blob_id: int) -> bool:
    """Download one blob if nobody else is; True when this call stored it."""
    token = claim(blob_id)
    if token is None:
        return False
    blob = Blob.objects.get(pk=blob_id)
    source = (VersionFile.objects.select_related("version__model")
              .filter(blob_id=blob_id, version__source=SourceKind.UPSTREAM).order_by("-version__created_at").first())
    try:
        if source is None:
            raise upstream.UpstreamError("repo", "no upstream version lists this file; import it again")
        partial = store.partial_path(blob.digest)
        already = partial.stat().st_size if partial.exists() else 0
        store.check_free_space(blob.size - already)
        model = source.version.model

        def progress(done: int) -> None:
            if not _renew(blob_id, token, done):
                raise _LostClaim()

        log.info("fetching %s (%d bytes) from upstream %s@%s", source.path, blob.size, model.repo_id,
                 source.version.sha[:12])
        upstream.download(model.repo_id, source.version.sha, source.path, blob.size, blob.digest,
                          store.decrypt_token(model.token_encrypted), progress)
    except _LostClaim:
        log.warning("lost the claim on %s; another process carries on", blob)
        return False
    except (upstream.UpstreamError, store.StoreError, OSError) as error:
        message = getattr(error, "message", None) or str(error)
        log.warning("download of %s failed: %s", blob, message)
        Blob.objects.filter(pk=blob_id, claim_token=token).update(
            state=BlobState.FAILED, error=message[:500], claim_token="", lease_until=None, attempts=blob.attempts + 1)
        _refresh_versions(blob_id)
        return False
    Blob.objects.filter(pk=blob_id, claim_token=token).update(
        state=BlobState.PRESENT, bytes_done=blob.size, claim_token="", lease_until=None, error="")
    _refresh_versions(blob_id)
    log.info("stored %s", blob)
    return True


def _refresh_versions(blob_id: int) -> None:
    ids = list(VersionFile.objects.filter(blob_id=blob_id).values_list("version_id", flat=True).distinct())
    catalog.refresh_sync_state(ids)


def wanted_blobs() -> list[int]:
    """Blobs that approved versions need and nobody is fetching (or whose fetcher died)."""
    now = timezone.now()
    return list(Blob.objects.filter(
        files__version__approval=ApprovalState.APPROVED, files__version__source=SourceKind.UPSTREAM,
    ).filter(Q(state=BlobState.MISSING) | Q(state=BlobState.DOWNLOADING, lease_until__lt=now))
        .values_list("pk", flat=True).distinct()[:1000])


def _run(blob_id: int) -> None:
    try:
        close_old_connections()
        fetch_blob(blob_id)
    except Exception:
        log.exception("fetching blob %s failed", blob_id)
    finally:
        with _lock:
            _queued.discard(blob_id)
        connection.close()


def submit(blob_id: int) -> None:
    """Fetch a blob in this process's background pool (no-op when already queued here)."""
    global _executor
    with _lock:
        if blob_id in _queued:
            return
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=settings.FLEET_HUB_SYNC_WORKERS,
                                           thread_name_prefix="hub-sync")
        _queued.add(blob_id)
        _executor.submit(_run, blob_id)


def tick() -> int:
    """The engine task: queue every wanted blob and refresh version states. Returns how many were queued."""
    blob_ids = wanted_blobs()
    for blob_id in blob_ids:
        submit(blob_id)
    catalog.refresh_sync_state()
    return len(blob_ids)


def kick() -> None:
    """Start syncing now, in this process (after a version is added or approved)."""
    if settings.FLEET_HF_OFFLINE:
        return
    try:
        tick()
    except Exception:
        log.exception("hub sync kick failed; the engine retries")


def wait_idle(timeout: float = 60) -> bool:
    """Tests and the bench: wait until this process has no queued downloads."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _lock:
            if not _queued:
                return True
        time.sleep(0.05)
    return False

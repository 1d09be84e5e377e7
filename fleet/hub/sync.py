"""Fetching blobs from upstream into the store: exactly one download per blob across every process.

Downloads run only in the engine's `hub-sync` task (`tick`), on a small worker pool it owns; web requests
never download, they only make a blob due now (`nudge`). A download starts with a compare-and-set claim on
the Blob row (a random token and a lease). The holder renews the lease as bytes arrive; a holder that died
stops renewing and its claim can be taken over, and the new holder resumes from the partial file.

A failure that retrying can fix (network, a 5xx from upstream, a full disk) puts the blob back as missing
with ``next_attempt_at`` pushed out by exponential backoff; one it cannot fix (checksum mismatch, gated,
unauthorized, gone upstream) or too many attempts mark it failed until an operator retries.
"""

from __future__ import annotations

import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from fleet.hub import catalog, store, upstream
from fleet.hub.models import ApprovalState, Blob, BlobState, SourceKind, VersionFile
from fleet.lib import backoff

log = logging.getLogger(__name__)

# Upstream error codes (see upstream.explain) that the same request cannot fix by being repeated.
PERMANENT = {"gated", "unauthorized", "repo_not_found", "revision_not_found", "checksum", "offline", "no_source",
             "token_key"}

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_queued: set[int] = set()  # blob ids submitted to this process's pool and not finished


def _due(now: datetime) -> Q:
    return (Q(state=BlobState.MISSING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))) | \
        Q(state=BlobState.DOWNLOADING, lease_until__lt=now)


def claim(blob_id: int) -> str | None:
    """Take the download of a blob: a token if this caller won, None if it is present, someone else has it,
    or its next attempt is not due yet."""
    token = secrets.token_hex(16)
    now = timezone.now()
    lease = now + timedelta(seconds=settings.FLEET_HUB_LEASE)
    won = Blob.objects.filter(pk=blob_id).filter(_due(now)).update(
        state=BlobState.DOWNLOADING, claim_token=token, lease_until=lease)
    return token if won else None


def _renew(blob_id: int, token: str, done: int) -> bool:
    lease = timezone.now() + timedelta(seconds=settings.FLEET_HUB_LEASE)
    return bool(Blob.objects.filter(pk=blob_id, claim_token=token, state=BlobState.DOWNLOADING).update(
        lease_until=lease, bytes_done=done))


class _LostClaim(Exception):
    pass


def retry_delay(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt."""
    return backoff.delay(attempts, settings.FLEET_HUB_RETRY_BASE, settings.FLEET_HUB_RETRY_MAX)


def _failed(blob: Blob, token: str, message: str, code: str) -> None:
    attempts = blob.attempts + 1
    final = code in PERMANENT or attempts >= settings.FLEET_HUB_SYNC_MAX_ATTEMPTS
    if final:
        log.warning("download of %s failed (attempt %d, giving up): %s", blob, attempts, message)
        changes = {"state": BlobState.FAILED, "next_attempt_at": None}
    else:
        wait = retry_delay(attempts)
        log.warning("download of %s failed (attempt %d, retrying in %.0f s): %s", blob, attempts, wait, message)
        changes = {"state": BlobState.MISSING, "next_attempt_at": timezone.now() + timedelta(seconds=wait)}
    Blob.objects.filter(pk=blob.pk, claim_token=token).update(
        error=message[:500], claim_token="", lease_until=None, attempts=attempts, **changes)


def fetch_blob(blob_id: int) -> bool:
    """Download one blob if it is due and nobody else is fetching it; True when this call stored it."""
    token = claim(blob_id)
    if token is None:
        return False
    blob = Blob.objects.get(pk=blob_id)
    source = (VersionFile.objects.select_related("version__model")
              .filter(blob_id=blob_id, version__source=SourceKind.UPSTREAM).order_by("-version__created_at").first())
    try:
        if source is None:
            raise upstream.UpstreamError("repo", "no upstream version lists this file; import it again", "no_source")
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
    except upstream.UpstreamError as error:
        _failed(blob, token, error.message, error.code)
        _refresh_versions(blob_id)
        return False
    except store.TokenKeyError as error:
        _failed(blob, token, error.message, "token_key")
        _refresh_versions(blob_id)
        return False
    except (store.StoreError, OSError) as error:
        _failed(blob, token, str(error), "local")
        _refresh_versions(blob_id)
        return False
    Blob.objects.filter(pk=blob_id, claim_token=token).update(
        state=BlobState.PRESENT, bytes_done=blob.size, claim_token="", lease_until=None, error="", attempts=0,
        next_attempt_at=None)
    _refresh_versions(blob_id)
    log.info("stored %s", blob)
    return True


def _refresh_versions(blob_id: int) -> None:
    ids = list(VersionFile.objects.filter(blob_id=blob_id).values_list("version_id", flat=True).distinct())
    catalog.refresh_sync_state(ids)


def wanted_blobs() -> list[int]:
    """Blobs that approved upstream versions need, that are due, and that nobody is fetching (or whose
    fetcher died)."""
    return list(Blob.objects.filter(
        files__version__approval=ApprovalState.APPROVED, files__version__source=SourceKind.UPSTREAM,
    ).filter(_due(timezone.now())).values_list("pk", flat=True).distinct()[:1000])


def nudge(blob_ids: list[int]) -> int:
    """Make missing blobs due now (skipping their backoff); the engine's next tick fetches them. Returns how many."""
    return Blob.objects.filter(pk__in=blob_ids, state=BlobState.MISSING).update(next_attempt_at=None)


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


def _submit(blob_id: int) -> None:
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
    """The engine's `hub-sync` task: start every due blob on the engine's download pool and refresh version
    states. Returns how many downloads were started."""
    blob_ids = [] if settings.FLEET_HF_OFFLINE else wanted_blobs()
    for blob_id in blob_ids:
        _submit(blob_id)
    catalog.refresh_sync_state()
    return len(blob_ids)


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

"""Registering, approving and deleting model versions, and choosing the one `main` serves. Each change is
one transaction with its audit row; the engine's `hub-sync` task fetches whatever became due."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from fleet.accounts import audit
from fleet.hub import store
from fleet.hub.entries import FileEntry
from fleet.hub.models import (
    ApprovalState,
    Blob,
    BlobState,
    HubModel,
    InstallState,
    ModelVersion,
    NodeCommand,
    NodeInstall,
    SyncState,
    VersionFile,
)
from fleet.lib.errors import FieldError

MAX_FILES = 10_000


class CatalogError(FieldError):
    """A refused catalog change, naming the form field at fault."""


def validate_entries(entries: list[FileEntry]) -> None:
    if not entries:
        raise CatalogError("allow_patterns", "no files to serve: the file filter matched nothing in this revision")
    if len(entries) > MAX_FILES:
        raise CatalogError("repo", f"{len(entries)} files is more than the {MAX_FILES} a version may hold")
    seen = set()
    for entry in entries:
        if not store.valid_repo_path(entry.path):
            raise CatalogError("repo", f"upstream listed an unsafe file path {entry.path!r}; refusing this revision")
        if entry.path in seen:
            raise CatalogError("repo", f"upstream listed {entry.path!r} twice")
        seen.add(entry.path)
        if entry.size is None or entry.size < 0 or not store.DIGEST.match(entry.digest) or len(entry.oid) != 40:
            raise CatalogError("repo", f"upstream gave no usable size or checksum for {entry.path!r}")


def find_version(repo_id: str, sha: str) -> ModelVersion | None:
    return ModelVersion.objects.select_related("model").filter(model__repo_id=repo_id, sha=sha).first()


def register_version(
    actor: Any,
    *,
    repo_id: str,
    revision: str,
    sha: str,
    entries: list[FileEntry],
    source: str,
    upstream: str = "",
    token: str | None = None,
    allow_patterns: list[str] | None = None,
    present: dict[str, bool] | None = None,
) -> ModelVersion:
    """Create the version, its files and any blobs not stored yet. ``present`` marks blobs just imported."""
    if not store.valid_repo_id(repo_id):
        raise CatalogError("repo", "repo must look like ORG/NAME (letters, digits, '.', '_' or '-')")
    if not store.SHA.match(sha):
        raise CatalogError("revision", f"{sha!r} is not a 40-hex commit sha")
    validate_entries(entries)
    existing = find_version(repo_id, sha)
    if existing is not None:
        raise CatalogError("revision", f"{repo_id}@{sha[:12]} is already registered (as revision "
                                       f"{existing.revision!r}); nothing to add")
    present = present or {}
    require_approval = settings.FLEET_REQUIRE_APPROVAL
    now = timezone.now()
    try:
        with transaction.atomic():
            model, created = HubModel.objects.get_or_create(
                repo_id=repo_id, defaults={"upstream": upstream, "created_by": _user(actor)}
            )
            if token is not None:
                model.token_encrypted = store.encrypt_token(token)
            if upstream:
                model.upstream = upstream
            if allow_patterns is not None:
                model.allow_patterns = allow_patterns
            model.save()
            digests = {entry.digest: entry.size for entry in entries}
            known = {blob.digest: blob for blob in Blob.objects.filter(digest__in=list(digests))}
            missing = [Blob(digest=d, size=s, state=BlobState.PRESENT if present.get(d) else BlobState.MISSING,
                            bytes_done=s if present.get(d) else 0)
                       for d, s in digests.items() if d not in known]
            Blob.objects.bulk_create(missing, ignore_conflicts=True)
            for digest in [d for d, ok in present.items() if ok]:
                Blob.objects.filter(digest=digest).exclude(state=BlobState.PRESENT).update(
                    state=BlobState.PRESENT, bytes_done=digests[digest], error="", claim_token="")
            blobs = {blob.digest: blob for blob in Blob.objects.filter(digest__in=list(digests))}
            all_present = all(blob.state == BlobState.PRESENT for blob in blobs.values())
            approved = not require_approval or _is_admin(actor)  # an admin adding it approves it
            version = ModelVersion.objects.create(
                model=model, revision=revision, sha=sha, source=source,
                total_size=sum(entry.size for entry in entries), file_count=len(entries),
                approval=ApprovalState.APPROVED if approved else ApprovalState.PENDING,
                approved_by=_user(actor) if approved and require_approval else None,
                approved_at=now if approved else None,
                sync_state=SyncState.SYNCED if all_present else SyncState.QUEUED,
                synced_at=now if all_present else None,
                created_by=_user(actor),
            )
            VersionFile.objects.bulk_create(
                VersionFile(version=version, path=e.path, size=e.size, oid=e.oid, lfs_sha256=e.lfs_sha256 or "",
                            blob=blobs[e.digest])
                for e in entries
            )
            audit.record(actor, "model_version.create", version, repo=repo_id, revision=revision, sha=sha,
                         size=version.total_size, files=len(entries), source=source,
                         **({"model_created": True} if created else {}))
    except IntegrityError:
        raise CatalogError("revision", f"{repo_id}@{sha[:12]} was just registered by someone else") from None
    return version


def set_approval(actor: Any, version: ModelVersion, approve: bool) -> bool:
    state = ApprovalState.APPROVED if approve else ApprovalState.REJECTED
    with transaction.atomic():
        changed = ModelVersion.objects.filter(pk=version.pk).exclude(approval=state).update(
            approval=state, approved_by=_user(actor), approved_at=timezone.now())
        if changed:
            audit.record(actor, "model_version.approve" if approve else "model_version.reject", version)
            if not approve and HubModel.objects.filter(pk=version.model_id, default_version=version).update(
                    default_version=None):
                audit.record(actor, "model.default_cleared", version.model, sha=version.sha, reason="rejected")
    return bool(changed)


def retry_sync(actor: Any, version: ModelVersion) -> int:
    """Make the version's failed and waiting blobs due now (a fresh series of attempts); returns how many.
    The engine's `hub-sync` task fetches them on its next tick."""
    with transaction.atomic():
        blobs = Blob.objects.filter(files__version=version)
        failed = blobs.filter(state=BlobState.FAILED).update(
            state=BlobState.MISSING, claim_token="", lease_until=None, attempts=0, next_attempt_at=None)
        waiting = blobs.filter(state=BlobState.MISSING, next_attempt_at__isnull=False).update(next_attempt_at=None)
        ModelVersion.objects.filter(pk=version.pk).exclude(sync_state=SyncState.SYNCED).update(
            sync_state=SyncState.QUEUED, sync_error="")
        audit.record(actor, "model_version.retry_sync", version, blobs=failed + waiting)
    return failed + waiting


def set_default(actor: Any, version: ModelVersion | None, model: HubModel | None = None) -> bool:
    """Mark ``version`` as what `main` serves for its repo, or (``version=None``) go back to the newest
    approved, synced version of ``model``. Returns whether anything changed."""
    model = model or version.model
    if version is not None and version.approval != ApprovalState.APPROVED:
        raise CatalogError("version", f"{version} is {version.get_approval_display().lower()}; approve it before "
                                      "making it the default")
    with transaction.atomic():
        changed = HubModel.objects.filter(pk=model.pk).exclude(
            default_version=version).update(default_version=version)
        if changed:
            if version is None:
                audit.record(actor, "model.default_cleared", model)
            else:
                audit.record(actor, "model.default_set", model, sha=version.sha, revision=version.revision)
    return bool(changed)


def current_version(model: HubModel) -> ModelVersion | None:
    """What `main` (and no revision) resolves to: the operator's default if it is approved, else the newest
    approved, synced version, else the newest approved one (served by pull-through), else the newest."""
    return current_versions([model]).get(model.pk)


def current_versions(models: list[HubModel]) -> dict[int, ModelVersion]:
    """``current_version`` of each model (model id → version), in one query."""
    by_model: dict[int, list[ModelVersion]] = {}
    for version in ModelVersion.objects.filter(model__in=models).order_by("-created_at", "-id"):
        by_model.setdefault(version.model_id, []).append(version)
    result = {}
    for model in models:
        versions = by_model.get(model.pk, [])  # newest first
        approved = [v for v in versions if v.approval == ApprovalState.APPROVED]
        chosen = (next((v for v in approved if v.pk == model.default_version_id), None)
                  or next((v for v in approved if v.sync_state == SyncState.SYNCED), None)
                  or next(iter(approved), None) or next(iter(versions), None))
        if chosen is not None:
            result[model.pk] = chosen
    return result


def delete_version(actor: Any, version: ModelVersion) -> int:
    """Delete a version and garbage-collect the blobs no other version references; returns bytes freed.

    Refused while a node holds it active, so a running fleet never loses the files it serves from.
    """
    active = list(NodeInstall.objects.filter(repo=version.model.repo_id, sha=version.sha,
                                             state=InstallState.ACTIVE).values_list("node__name", flat=True)[:5])
    if active:
        raise CatalogError("version", f"{version} is active on {', '.join(active)}; activate another version "
                                      "there first")
    busy = list(NodeCommand.objects.filter(version=version, finished_at__isnull=True)
                .values_list("node__name", flat=True)[:5])
    if busy:
        raise CatalogError("version", f"{version} is being deployed to {', '.join(busy)}; wait until that "
                                      "finishes")
    with transaction.atomic():
        blob_ids = list(version.files.values_list("blob_id", flat=True))
        audit.record(actor, "model_version.delete", version, sha=version.sha, size=version.total_size)
        model = version.model
        version.delete()
        if not model.versions.exists():
            audit.record(actor, "model.delete", model)
            model.delete()
        orphans = list(Blob.objects.filter(pk__in=blob_ids).annotate(refs=Count("files")).filter(refs=0))
        Blob.objects.filter(pk__in=[blob.pk for blob in orphans]).delete()
    freed = 0
    for blob in orphans:  # after commit: a failed transaction must not lose files
        if store.blob_path(blob.digest).exists():
            freed += blob.size
        store.remove_blob_files(blob.digest)
    return freed


def version_progress(versions: list[ModelVersion]) -> dict[int, int]:
    """Bytes stored so far per version id (present blobs, plus what downloads in progress have)."""
    if not versions:
        return {}
    rows = (VersionFile.objects.filter(version__in=versions)
            .values("version_id", "size", "blob__state", "blob__bytes_done"))
    done: dict[int, int] = {version.pk: 0 for version in versions}
    for row in rows:
        if row["blob__state"] == BlobState.PRESENT:
            done[row["version_id"]] += row["size"]
        else:
            done[row["version_id"]] += min(row["size"], row["blob__bytes_done"] or 0)
    return done


def refresh_sync_state(version_ids: list[int] | None = None) -> None:
    """Derive each unfinished version's sync state from its blobs (compare-and-set per version)."""
    query = ModelVersion.objects.exclude(sync_state=SyncState.SYNCED)
    if version_ids is not None:
        query = query.filter(pk__in=version_ids)
    for version in query.annotate(
        n_present=Count("files", filter=Q(files__blob__state=BlobState.PRESENT)),
        n_failed=Count("files", filter=Q(files__blob__state=BlobState.FAILED)),
        n_busy=Count("files", filter=Q(files__blob__state=BlobState.DOWNLOADING)),
        n_waiting=Count("files", filter=Q(files__blob__state=BlobState.MISSING, files__blob__attempts__gt=0)),
    ):
        if version.n_present == version.file_count:
            state, error = SyncState.SYNCED, ""
        elif version.n_failed:
            first = Blob.objects.filter(files__version=version, state=BlobState.FAILED).values_list(
                "error", flat=True).first()
            state, error = SyncState.FAILED, (first or "a file failed to download")[:500]
        elif version.n_waiting:
            first = Blob.objects.filter(files__version=version, state=BlobState.MISSING, attempts__gt=0).values_list(
                "error", flat=True).first()
            state, error = SyncState.RETRYING, (first or "a download failed; retrying")[:500]
        elif version.n_busy or version.n_present:
            state, error = SyncState.SYNCING, ""
        else:
            state, error = SyncState.QUEUED, ""
        if state != version.sync_state or error != version.sync_error:
            ModelVersion.objects.filter(pk=version.pk, sync_state=version.sync_state).update(
                sync_state=state, sync_error=error, synced_at=timezone.now() if state == SyncState.SYNCED else None)


def _user(actor: Any) -> Any:
    return actor if getattr(actor, "pk", None) and hasattr(actor, "get_username") else None


def _is_admin(actor: Any) -> bool:
    user = _user(actor)
    return user is None or user.has_role("admin")  # a command-line import is an admin's act

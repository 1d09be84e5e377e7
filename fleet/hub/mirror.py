"""The `/hf/` mirror: the part of the Hugging Face Hub API that huggingface_hub, transformers and vLLM use
(DESIGN.md §4). Bearer auth by node secret or `hub`-scoped API key; only registered, approved versions.

Django answers metadata, HEAD and small files; a large blob GET becomes an `X-Accel-Redirect` to nginx
(production) or a 302 to a signed URL on the blob server (embedded default), never a body through Daphne.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from urllib.parse import quote

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from fleet.accounts.apikeys import authenticate_api_key
from fleet.hub import blobserver, catalog, store
from fleet.hub.models import ApprovalState, Blob, BlobState, HubModel, ModelVersion, VersionFile
from fleet.inventory.services import authenticate_node
from fleet.lib.http import request_bearer

log = logging.getLogger(__name__)
MAX_LIST = 1000
DEFAULT_REVISIONS = {"", "main"}  # what HF clients ask for when given no revision


def _error(status: int, code: str | None, message: str, commit: str | None = None) -> HttpResponse:
    response = JsonResponse({"error": message}, status=status)
    if code:
        response["X-Error-Code"] = code
    response["X-Error-Message"] = message
    if commit:
        response["X-Repo-Commit"] = commit
    return response


def hub_auth(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """`Authorization: Bearer <node secret | hub API key>`, else 401."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        token = request_bearer(request)
        if not token:
            return _error(401, None, "authentication required: send Authorization: Bearer <node secret or an "
                                     "API key with the hub scope> (HF_TOKEN)")
        principal = authenticate_node(token) if token.startswith("fns_") else authenticate_api_key(token, "hub")
        if principal is None:
            return _error(401, None, "Invalid credentials in Authorization header")
        request.hub_principal = principal
        return view(request, *args, **kwargs)

    wrapper.hub_auth = True  # read by the test that checks every mirror URL is protected
    return wrapper


def _find(repo_id: str, revision: str) -> tuple[ModelVersion | None, HttpResponse | None]:
    """The version ``revision`` names in ``repo_id``, or the error response to send."""
    if not store.valid_repo_id(repo_id):
        return None, _error(404, "RepoNotFound", f"Repository {repo_id!r} not found")
    model = HubModel.objects.filter(repo_id=repo_id).first()
    if model is None:
        return None, _error(404, "RepoNotFound", f"Repository {repo_id} is not registered in this Fleet mirror")
    versions = ModelVersion.objects.filter(model=model)
    if revision in DEFAULT_REVISIONS:
        version = catalog.current_version(model)
    elif store.SHA.match(revision):
        version = versions.filter(sha=revision).first()
    else:
        version = (versions.filter(revision=revision, approval=ApprovalState.APPROVED).order_by("-created_at").first()
                   or versions.filter(revision=revision).order_by("-created_at").first())
    if version is None:
        return None, _error(404, "RevisionNotFound", f"Revision {revision!r} of {repo_id} is not registered in this "
                                                     "Fleet mirror")
    if version.approval != ApprovalState.APPROVED:
        state = version.get_approval_display().lower()
        return None, _error(403, "GatedRepo", f"{repo_id}@{version.sha[:12]} is {state} in Fleet; an admin must "
                                              "approve it before nodes can pull it")
    version.model = model
    return version, None


def _modified(version: ModelVersion) -> str:
    return version.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@require_http_methods(["GET"])
@hub_auth
def list_models(request: HttpRequest) -> HttpResponse:
    models = list(HubModel.objects.filter(versions__approval=ApprovalState.APPROVED).distinct().order_by("repo_id"))
    current = catalog.current_versions(models)
    search = request.GET.get("search", "").strip().lower()
    author = request.GET.get("author", "").strip().lower()
    try:
        limit = max(1, min(MAX_LIST, int(request.GET.get("limit") or MAX_LIST)))
    except ValueError:
        return _error(400, None, "limit: give a whole number")
    items = []
    for model in models:
        repo_id, version = model.repo_id, current.get(model.pk)
        if version is None or (search and search not in repo_id.lower()) or \
                (author and repo_id.split("/")[0].lower() != author):
            continue
        items.append({"id": repo_id, "modelId": repo_id, "sha": version.sha, "lastModified": _modified(version),
                      "private": False, "gated": False, "tags": []})
    return JsonResponse(items[:limit], safe=False)


@require_http_methods(["GET"])
@hub_auth
def model_info(request: HttpRequest, repo_id: str, revision: str = "main") -> HttpResponse:
    version, error = _find(repo_id, revision)
    if error:
        return error
    siblings = []
    for file in version.files.all():
        sibling = {"rfilename": file.path, "size": file.size, "blobId": file.oid}
        if file.lfs_sha256:
            sibling["lfs"] = {"sha256": file.lfs_sha256, "size": file.size, "pointerSize": 134}
        siblings.append(sibling)
    return JsonResponse({
        "id": repo_id, "modelId": repo_id, "sha": version.sha, "lastModified": _modified(version),
        "private": False, "gated": False, "disabled": False, "tags": [], "siblings": siblings,
    })


@require_http_methods(["GET"])
@hub_auth
def auth_check(request: HttpRequest, repo_id: str) -> HttpResponse:
    if not HubModel.objects.filter(repo_id=repo_id).exists():
        return _error(404, "RepoNotFound", f"Repository {repo_id} is not registered in this Fleet mirror")
    return JsonResponse({"ok": True})


@require_http_methods(["GET"])
@hub_auth
def tree(request: HttpRequest, repo_id: str, revision: str, path: str = "") -> HttpResponse:
    version, error = _find(repo_id, revision)
    if error:
        return error
    path = (path or "").strip("/")
    if path and not store.valid_repo_path(path):
        return _error(400, None, "path: not a valid path inside the repository")
    recursive = request.GET.get("recursive", "").lower() in {"1", "true"}
    prefix = f"{path}/" if path else ""
    entries, folders = [], set()
    for file in version.files.all():
        if not file.path.startswith(prefix):
            continue
        rest = file.path[len(prefix):]
        if not recursive and "/" in rest:
            folders.add(prefix + rest.split("/", 1)[0])
            continue
        if recursive:
            parts = rest.split("/")[:-1]
            folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
        entry = {"type": "file", "path": file.path, "size": file.size, "oid": file.oid}
        if file.lfs_sha256:
            entry["lfs"] = {"oid": file.lfs_sha256, "size": file.size, "pointerSize": 134}
        entries.append(entry)
    if path and not entries and not folders:
        return _error(404, "EntryNotFound", f"{path} is not in {repo_id}@{version.sha[:12]}", version.sha)
    listing = [{"type": "directory", "path": folder, "size": 0, "oid": "0" * 40} for folder in sorted(folders)]
    return JsonResponse(listing + entries, safe=False)


@require_http_methods(["GET", "HEAD"])
@hub_auth
def resolve(request: HttpRequest, repo_id: str, revision: str, path: str) -> HttpResponse:
    version, error = _find(repo_id, revision)
    if error:
        return error
    if not store.valid_repo_path(path):
        return _error(400, "EntryNotFound", "path: refused (absolute, '..' or otherwise not a path inside the repo)",
                      version.sha)
    file = VersionFile.objects.select_related("blob").filter(version=version, path=path).first()
    if file is None:
        return _error(404, "EntryNotFound", f"{path} is not in {repo_id}@{version.sha[:12]}", version.sha)
    blob = file.blob
    etag = f'"{file.etag}"'
    present = blob.state == BlobState.PRESENT
    if present and request.method == "GET" and not store.blob_path(blob.digest).exists():
        # Lost from the store (a disk swap, a hand-deleted file): fetch it again instead of failing.
        log.warning("%s is marked present but missing from the store; fetching it again", blob)
        Blob.objects.filter(pk=blob.pk, state=BlobState.PRESENT).update(state=BlobState.MISSING, bytes_done=0)
        blob.state, present = BlobState.MISSING, False
    small = file.size <= settings.FLEET_HUB_INLINE_MAX
    if request.method == "GET" and present and small:
        response = _inline(request, file)
    elif request.method == "GET":
        if blob.state == BlobState.FAILED:
            return _error(502, None, f"fetching {path} from upstream failed: {blob.error}; an operator can retry "
                                     "the sync on the Models page")
        if blob.state == BlobState.MISSING and blob.next_attempt_at and blob.next_attempt_at > timezone.now():
            # Waiting out a backoff after an upstream failure: say so instead of holding the client.
            wait = max(1, int((blob.next_attempt_at - timezone.now()).total_seconds()) + 1)
            response = _error(503, None, f"fetching {path} from upstream failed ({blob.error}); the mirror retries "
                                         f"in {wait} s (attempt {blob.attempts + 1})", version.sha)
            response["Retry-After"] = str(wait)
            return response
        # Not stored yet: the engine's hub-sync task fetches it (once, whoever asks); the blob server this
        # redirect leads to follows the partial file as it grows.
        response = _redirect(request, blob.digest, file.size, present)
    else:
        response = HttpResponse(status=200)
        response["Content-Length"] = str(file.size)
    response["X-Repo-Commit"] = version.sha
    response["ETag"] = etag
    response["X-Linked-Etag"] = etag
    response["X-Linked-Size"] = str(file.size)
    response["Accept-Ranges"] = "bytes"
    response.setdefault("Content-Type", "application/octet-stream")
    response["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"
    return response


def _inline(request: HttpRequest, file: VersionFile) -> HttpResponse:
    data = store.blob_path(file.blob.digest).read_bytes()
    try:
        span = blobserver.parse_range(request.headers.get("Range"), len(data))
    except ValueError:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{len(data)}"
        return response
    if span is None:
        return HttpResponse(data, content_type="application/octet-stream")
    start, end = span
    response = HttpResponse(data[start:end + 1], status=206, content_type="application/octet-stream")
    response["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return response


def _redirect(request: HttpRequest, digest: str, size: int, present: bool) -> HttpResponse:
    accel = settings.FLEET_HUB_ACCEL_REDIRECT
    if accel and present:
        response = HttpResponse(status=200)
        response["X-Accel-Redirect"] = f"{accel}/{store.relative_blob_path(digest)}"
        response["X-Accel-Buffering"] = "no"
        return response
    if not settings.FLEET_BLOB_SERVER:
        response = _error(503, None, "this file is still being fetched from upstream; retry shortly")
        response["Retry-After"] = "10"
        return response
    location = blobserver.base_url(request.get_host()) + blobserver.signed_path(digest, size)
    response = HttpResponse(status=302)
    response["Location"] = location
    return response

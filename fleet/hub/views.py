"""Model pages: the catalog with sync progress and where each version is, adding a version with a preview,
one version's files and nodes, and the actions (approve, delete, retry, deploy, activate, remove)."""

from __future__ import annotations

import secrets
from collections import defaultdict

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from fleet.accounts.permissions import operator_required, viewer_required
from fleet.hub import catalog, commands, services, store, upstream
from fleet.hub.forms import AddModelForm, DeployForm
from fleet.hub.models import CommandKind, ModelVersion, NodeCommand, NodeInstall
from fleet.hub.reach import unreachable_reason
from fleet.hub.version_nodes import version_nodes_context
from fleet.inventory.models import Node
from fleet.lib.errors import FieldError
from fleet.lib.http import paginate, safe_next
from fleet.lib.ids import parse_id, parse_id_list
from fleet.lib.units import format_bytes, percent

VERSIONS_PER_PAGE = 50
PREVIEW_KEY = "hub_preview"


def _installs_by_version(versions: list[ModelVersion]) -> dict[int, list[NodeInstall]]:
    by_version: dict[int, list[NodeInstall]] = defaultdict(list)
    rows = NodeInstall.objects.filter(version__in=versions).select_related("node").order_by("-state", "node__name")
    for row in rows:
        by_version[row.version_id].append(row)
    return by_version


@viewer_required
def model_list(request: HttpRequest) -> HttpResponse:
    versions = ModelVersion.objects.select_related("model").order_by("model__repo_id", "-created_at", "-id")
    page = paginate(request, versions, VERSIONS_PER_PAGE)
    rows = list(page.object_list)
    progress = catalog.version_progress(rows)
    installs = _installs_by_version(rows)
    current = {v.pk for v in catalog.current_versions(list({v.model_id: v.model for v in rows}.values())).values()}
    for version in rows:
        version.serves_main = version.pk in current
        version.bytes_done = progress.get(version.pk, 0)
        version.percent = percent(version.bytes_done, version.total_size, empty=100)
        version.node_installs = installs.get(version.pk, [])
    return render(request, "hub/model_list.html", {"page": page, "versions": rows,
                                                  "free_bytes": _free_bytes()})


def _free_bytes() -> int | None:
    try:
        return store.free_bytes()
    except OSError:
        return None


@operator_required
def model_add(request: HttpRequest) -> HttpResponse:
    """GET: the form. POST action=preview: resolve and show files. POST action=confirm: register."""
    form = AddModelForm(request.POST or None, initial={"revision": "main"})
    preview, preview_id = None, ""
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        confirm = request.POST.get("action") == "confirm"
        pending = request.session.get(PREVIEW_KEY) or {}
        # The token is never sent back to the browser: between preview and confirm it waits, encrypted,
        # in the server-side session under a one-time id.
        token = data["token"]
        if confirm and not token and pending.get("id") == request.POST.get("preview_id"):
            try:
                token = store.decrypt_token(pending.get("token", ""))
            except store.TokenKeyError:
                token = ""  # the key changed since the preview: the stored or global token applies
        try:
            if confirm:
                version = services.add_version(request.user, data["repo"], data["revision"], token,
                                               data["allow_patterns"] or None,
                                               expect_sha=request.POST.get("expect_sha", ""))
                request.session.pop(PREVIEW_KEY, None)
                messages.success(request, f"Added {version.model.repo_id}@{version.sha[:12]} "
                                          f"({format_bytes(version.total_size)}); "
                                          + ("it syncs now." if version.servable else "an admin must approve it."))
                return redirect("hub-version", pk=version.pk)
            preview = services.preview(data["repo"], data["revision"], token, data["allow_patterns"] or None)
            preview_id = secrets.token_urlsafe(12)
            request.session[PREVIEW_KEY] = {"id": preview_id, "token": store.encrypt_token(token)}
        except (upstream.UpstreamError, catalog.CatalogError, store.TokenKeyError) as error:
            field = error.field if error.field in form.fields else None
            form.add_error(field, error.message)
            preview = None
    return render(request, "hub/model_add.html", {"form": form, "preview": preview, "preview_id": preview_id,
                                                 "upstream": upstream.endpoint(),
                                                 "free_bytes": _free_bytes()})


@viewer_required
def version_detail(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion.objects.select_related("model", "created_by", "approved_by"), pk=pk)
    version.bytes_done = catalog.version_progress([version]).get(version.pk, 0)
    version.percent = percent(version.bytes_done, version.total_size, empty=100)
    files = list(version.files.select_related("blob"))
    waiting = [f.blob for f in files if f.blob.retrying and f.blob.next_attempt_at]
    next_retry = min(waiting, key=lambda blob: blob.next_attempt_at) if waiting else None
    current = catalog.current_version(version.model)
    recent = list(NodeCommand.objects.filter(version=version).select_related("node", "created_by")[:50])
    deploy_form = DeployForm(initial={"version": version.pk}) if request.user.has_role("operator") else None
    return render(request, "hub/version_detail.html", {
        **version_nodes_context(version, request.user),
        "version": version, "files": files, "recent": recent, "deploy_form": deploy_form,
        "next_retry": next_retry, "max_attempts": settings.FLEET_HUB_SYNC_MAX_ATTEMPTS,
        "is_current": current is not None and current.pk == version.pk, "current": current,
        "is_default": version.model.default_version_id == version.pk,
        "mirror_example": f"HF_ENDPOINT={request.build_absolute_uri('/hf').rstrip('/')}",
    })


@require_POST
@operator_required
def version_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=pk)
    label = str(version)
    if action in ("approve", "reject"):
        if not request.user.has_role("admin"):
            messages.error(request, "Approving or rejecting a version needs the admin role.")
            return redirect("hub-version", pk=pk)
        changed = catalog.set_approval(request.user, version, action == "approve")
        messages.success(request, f"{label} {action}d." if changed else f"{label} was already {action}d.")
        return redirect("hub-version", pk=pk)
    if action == "retry":
        count = catalog.retry_sync(request.user, version)
        messages.success(request, f"Retrying {count} file{'s' if count != 1 else ''} of {label} now.")
        return redirect("hub-version", pk=pk)
    if action in ("default", "undefault"):
        try:
            changed = catalog.set_default(request.user, version if action == "default" else None, version.model)
        except catalog.CatalogError as error:
            messages.error(request, f"{error.field}: {error.message}")
            return redirect("hub-version", pk=pk)
        if action == "default":
            messages.success(request, f"`main` of {version.model.repo_id} now serves {label}." if changed
                             else f"{label} already was the default.")
        else:
            messages.success(request, f"`main` of {version.model.repo_id} serves the newest approved, synced "
                                      "version again.")
        return redirect("hub-version", pk=pk)
    if action == "delete":
        try:
            freed = catalog.delete_version(request.user, version)
        except catalog.CatalogError as error:
            messages.error(request, error.message)
            return redirect("hub-version", pk=pk)
        messages.success(request, f"Deleted {label}; {format_bytes(freed)} of unshared files freed.")
        return redirect("hub-models")
    messages.error(request, f"unknown action {action!r}")
    return redirect("hub-version", pk=pk)


@require_POST
@operator_required
def deploy(request: HttpRequest) -> HttpResponse:
    form = DeployForm(request.POST)
    fallback = reverse("hub-models")
    if not form.is_valid():
        for field, errors in form.errors.items():
            for error in errors:
                messages.error(request, f"{field}: {error}")
        return redirect(safe_next(request, fallback))
    node, version = form.cleaned_data["node"], form.cleaned_data["version"]
    if reason := unreachable_reason(node):
        messages.error(request, f"node: {reason}")
        return redirect(safe_next(request, fallback))
    try:
        commands.create(request.user, node, CommandKind.DEPLOY, version, activate=form.cleaned_data["activate"])
    except FieldError as error:
        messages.error(request, f"{error.field}: {error.message}")
    else:
        messages.success(request, f"Deploying {version} to {node.name}"
                                  + (" (activates once staged)." if form.cleaned_data["activate"] else "."))
    return redirect(safe_next(request, fallback))


@require_POST
@operator_required
def node_command(request: HttpRequest, node_pk: int, kind: str) -> HttpResponse:
    node = get_object_or_404(Node, pk=node_pk)
    fallback = reverse("node-detail", args=[node.pk])
    if kind not in (CommandKind.ACTIVATE, CommandKind.REMOVE):
        messages.error(request, f"kind: {kind!r} is not a node command here; use activate or remove")
        return redirect(fallback)
    try:
        version = ModelVersion.objects.select_related("model").get(pk=parse_id(request.POST.get("version", "")))
    except (ValueError, ModelVersion.DoesNotExist):
        messages.error(request, "version: choose a registered model version")
        return redirect(safe_next(request, fallback))
    if reason := unreachable_reason(node):
        messages.error(request, f"node: {reason}")
        return redirect(safe_next(request, fallback))
    try:
        commands.create(request.user, node, kind, version)
    except FieldError as error:
        messages.error(request, f"{error.field}: {error.message}")
    else:
        messages.success(request, f"{kind.capitalize()} {version} on {node.name}: sent.")
    return redirect(safe_next(request, fallback))


@viewer_required
def progress(request: HttpRequest) -> JsonResponse:
    """Sync progress of versions and progress of node commands, for the pages' progress bars."""
    def ids(name: str) -> list[int] | None:
        try:
            values = parse_id_list(request.GET.get(name, ""))
        except ValueError:
            return None
        return values[:200]

    version_ids, command_ids = ids("versions"), ids("commands")
    if version_ids is None or command_ids is None:
        return JsonResponse({"error": "versions, commands: give ids as comma-separated whole numbers "
                                      "(1 to 2**63-1)"}, status=400)
    versions = list(ModelVersion.objects.filter(pk__in=version_ids))
    done = catalog.version_progress(versions)
    payload = {
        "versions": {v.pk: {"state": v.sync_state, "label": v.get_sync_state_display(), "colour": v.sync_colour,
                            "done": done.get(v.pk, 0), "total": v.total_size, "error": v.sync_error}
                     for v in versions},
        "commands": {c.pk: {"state": c.state, "label": c.get_state_display(), "colour": c.state_colour,
                            "done": c.bytes_done, "total": c.bytes_total, "rate": c.bytes_per_second,
                            "error": c.error}
                     for c in NodeCommand.objects.filter(pk__in=command_ids)},
    }
    return JsonResponse(payload)

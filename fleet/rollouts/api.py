"""The JSON API for pipelines at /api/ (django-ninja; OpenAPI schema at /api/schema/).

Auth: a browser session (CSRF checked on unsafe methods) or ``Authorization: Bearer <API key>`` of the
``rollouts`` scope. Viewers read; operators and admins create and act. Refusals name the field at fault:
``{"error": "...", "field": "..."}``. Every change goes through `fleet.rollouts.services`, which audits it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth
from pydantic import Field

from fleet.accounts.apikeys import authenticate_api_key
from fleet.accounts.models import ApiScope, Role
from fleet.hub.models import HubModel, SyncState
from fleet.inventory.models import Node
from fleet.lib.errors import FieldError
from fleet.rollouts import overview, services, transitions
from fleet.rollouts.models import Deployment, Rollout

AUTH_HINT = "log in, or send Authorization: Bearer with an API key of the rollouts scope"


class ApiKeyAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        key = authenticate_api_key(token, ApiScope.ROLLOUTS)
        return key.user if key is not None else None


def _user(request: HttpRequest) -> Any:
    """Who is calling: the API key's owner or the session's user, with the role checked by `require`."""
    return request.auth


def require(request: HttpRequest, role: str) -> Any:
    user = _user(request)
    if not user.has_role(role):
        raise HttpError(403, f"this needs the {role} role")
    return user


def _schema_access(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The schema is for callers of the API: a viewer's session or a rollouts API key."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user if request.user.is_authenticated else ApiKeyAuth()(request)
        if user is None:
            return JsonResponse({"error": AUTH_HINT}, status=401)
        if not user.has_role(Role.VIEWER):
            return JsonResponse({"error": "this needs the viewer role"}, status=403)
        return view(request, *args, **kwargs)

    wrapper.required_role = Role.VIEWER  # read by tests/server/test_every_url_protected.py
    return wrapper


api = NinjaAPI(title="Fleet rollouts API", version="1", urls_namespace="api", docs_url=None,
               openapi_url="/schema/", docs_decorator=_schema_access, auth=[ApiKeyAuth(), SessionAuth()])


@api.exception_handler(FieldError)
def _field_error(request: HttpRequest, error: FieldError) -> HttpResponse:
    return api.create_response(request, {"error": error.message, "field": error.field}, status=error.status)


@api.exception_handler(transitions.Conflict)
def _conflict(request: HttpRequest, error: transitions.Conflict) -> HttpResponse:
    return api.create_response(request, {"error": str(error), "field": None}, status=409)


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, error: ValidationError) -> HttpResponse:
    errors = []
    for item in error.errors:
        loc = [str(part) for part in item.get("loc", ())]
        loc = loc[2:] if loc[:1] == ["body"] and len(loc) > 2 else loc[1:] if loc[:1] in (["query"], ["path"]) else loc
        errors.append({"field": ".".join(loc) or "body", "message": item.get("msg", "invalid")})
    first = errors[0] if errors else {"field": "body", "message": "send a JSON object"}
    return api.create_response(request, {"error": first["message"], "field": first["field"], "errors": errors},
                               status=400)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, error: AuthenticationError) -> HttpResponse:
    return api.create_response(request, {"error": AUTH_HINT}, status=401)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, error: HttpError) -> HttpResponse:
    return api.create_response(request, {"error": str(error.message)}, status=error.status_code)


# ---- schemas -----------------------------------------------------------------------------------------


class VersionRef(Schema):
    sha: str
    revision: str


class DeploymentNode(Schema):
    name: str
    status: str
    serving: VersionRef | None = Field(description="the version of the deployment's repo it serves now")
    in_sync: bool


class RolloutSummary(Schema):
    id: int
    deployment: str
    state: str
    reason: str
    pause_reason: str
    from_version: VersionRef | None
    to_version: VersionRef
    created_at: datetime
    finished_at: datetime | None


class DeploymentOut(Schema):
    name: str
    repo: str
    version: VersionRef = Field(description="the version it serves (after an aborted rollout, the old one)")
    selector: dict[str, str]
    runtime: str
    nodes: list[DeploymentNode]
    rollout: RolloutSummary | None = Field(description="its newest rollout")


class DeploymentIn(Schema):
    name: str = Field(description="a slug such as chat-default")
    repo: str = Field(description="ORG/NAME of a model on the Models page")
    version: str = Field(description="a revision name or (short) sha of an approved version")
    selector: dict[str, str] = Field(default_factory=dict, description="labels a node must all carry")
    nodes: list[str] = Field(default_factory=list, description="node names that belong whatever their labels")
    runtime: str = "builtin"


class VersionOut(Schema):
    sha: str
    revision: str
    synced: bool
    approved: bool


class TargetOut(Schema):
    node: str
    wave: int
    state: str
    on: str
    attempt: int
    error: str
    bytes_done: int = Field(0, description="while it stages: bytes downloaded so far")
    bytes_total: int = 0
    bytes_per_second: int = Field(0, description="while it stages: the node's pull rate")


class EventOut(Schema):
    at: datetime
    node: str | None
    from_state: str
    to_state: str
    why: str
    by: str


class RolloutOut(RolloutSummary):
    repo: str
    strategy: dict[str, Any]
    created_by: str | None
    targets: list[TargetOut]
    events: list[EventOut] = []


class RolloutIn(Schema):
    deployment: str = Field(description="the deployment's name")
    version: str = Field(description="a revision name or (short) sha of an approved version")
    strategy: dict[str, Any] = Field(default_factory=dict, description="fields of the strategy; omitted ones "
                                                                        "take their defaults")


class ActionIn(Schema):
    reason: str = Field("", max_length=300)
    node: str = Field("", description="retry: the failed node's name")


class Problem(Schema):
    error: str
    field: str | None = None


# ---- endpoints ---------------------------------------------------------------------------------------


def _deployment(name: str) -> Deployment:
    deployment = Deployment.objects.select_related("model", "desired_version").filter(name=name).first()
    if deployment is None:
        raise FieldError("deployment", f"no deployment named {name!r}", status=404)
    return deployment


def _rollout_body(rollout_id: int) -> dict[str, Any]:
    try:
        rollout, targets, events = overview.rollout_detail(rollout_id)
    except Rollout.DoesNotExist:
        raise FieldError("id", f"no rollout {rollout_id}", status=404) from None
    return overview.rollout_json(rollout, targets, events)


@api.get("/deployments/", response=list[DeploymentOut], tags=["deployments"])
def list_deployments(request: HttpRequest) -> list[dict[str, Any]]:
    require(request, Role.VIEWER)
    return [overview.deployment_json(view) for view in overview.deployments()]


@api.post("/deployments/", response={201: DeploymentOut, 400: Problem, 403: Problem}, tags=["deployments"])
def create_deployment(request: HttpRequest, payload: DeploymentIn) -> Status:
    user = require(request, Role.OPERATOR)
    deployment = services.create_deployment(user, payload.name, payload.repo, payload.version,
                                            selector=payload.selector, nodes=payload.nodes, runtime=payload.runtime)
    return Status(201, overview.deployment_json(overview.deployments(only=deployment)[0]))


@api.get("/versions/", response={200: list[VersionOut], 404: Problem}, tags=["versions"])
def list_versions(request: HttpRequest, repo: str) -> list[dict[str, Any]]:
    require(request, Role.VIEWER)
    model = HubModel.objects.filter(repo_id=repo).first()
    if model is None:
        raise FieldError("repo", f"{repo} is not known; add it on the Models page first", status=404)
    return [{"sha": v.sha, "revision": v.revision, "synced": v.sync_state == SyncState.SYNCED,
             "approved": v.approval == "approved"} for v in model.versions.order_by("-created_at", "-id")]


@api.post("/rollouts/", response={201: RolloutOut, 400: Problem, 403: Problem, 404: Problem, 409: Problem},
          tags=["rollouts"])
def create_rollout(request: HttpRequest, payload: RolloutIn) -> Status:
    user = require(request, Role.OPERATOR)
    rollout = services.create_rollout(user, _deployment(payload.deployment), payload.version, payload.strategy)
    return Status(201, _rollout_body(rollout.pk))


@api.get("/rollouts/{rollout_id}/", response={200: RolloutOut, 404: Problem}, tags=["rollouts"])
def get_rollout(request: HttpRequest, rollout_id: int) -> dict[str, Any]:
    require(request, Role.VIEWER)
    return _rollout_body(rollout_id)


def _act(request: HttpRequest, rollout_id: int, action: str, payload: ActionIn | None) -> dict[str, Any]:
    user = require(request, Role.OPERATOR)
    rollout = Rollout.objects.select_related("deployment__model", "from_version", "to_version").filter(
        pk=rollout_id).first()
    if rollout is None:
        raise FieldError("id", f"no rollout {rollout_id}", status=404)
    node = None
    if action == "retry":
        node = Node.objects.filter(name=(payload.node if payload else "")).first()
        if node is None:
            raise FieldError("node", "name the failed node to retry")
    result = services.act(user, rollout, action, node=node, reason=payload.reason if payload else "")
    return _rollout_body(result.pk)


_ACTION_RESPONSES = {200: RolloutOut, 400: Problem, 403: Problem, 404: Problem, 409: Problem}


@api.post("/rollouts/{rollout_id}/pause/", response=_ACTION_RESPONSES, tags=["rollouts"])
def pause(request: HttpRequest, rollout_id: int, payload: ActionIn | None = None) -> dict[str, Any]:
    return _act(request, rollout_id, "pause", payload)


@api.post("/rollouts/{rollout_id}/resume/", response=_ACTION_RESPONSES, tags=["rollouts"])
def resume(request: HttpRequest, rollout_id: int, payload: ActionIn | None = None) -> dict[str, Any]:
    return _act(request, rollout_id, "resume", payload)


@api.post("/rollouts/{rollout_id}/abort/", response=_ACTION_RESPONSES, tags=["rollouts"])
def abort(request: HttpRequest, rollout_id: int, payload: ActionIn | None = None) -> dict[str, Any]:
    return _act(request, rollout_id, "abort", payload)


@api.post("/rollouts/{rollout_id}/rollback/", response=_ACTION_RESPONSES, tags=["rollouts"],
          description="Abort and revert a running rollout, or roll a succeeded one back (a new, fast-track "
                      "rollout to the previous version, returned here).")
def rollback(request: HttpRequest, rollout_id: int, payload: ActionIn | None = None) -> dict[str, Any]:
    return _act(request, rollout_id, "rollback", payload)


@api.post("/rollouts/{rollout_id}/retry/", response=_ACTION_RESPONSES, tags=["rollouts"])
def retry(request: HttpRequest, rollout_id: int, payload: ActionIn) -> dict[str, Any]:
    return _act(request, rollout_id, "retry", payload)

"""Deployment and rollout pages: the list, one deployment (desired vs actual per node, its rollouts), the
new-rollout form with a preview of the waves, and a rollout's live page with the operator's buttons."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from fleet.accounts.permissions import operator_required, viewer_required
from fleet.inventory.models import Node
from fleet.lib.errors import FieldError
from fleet.lib.http import paginate
from fleet.rollouts import overview, preview, services, transitions
from fleet.rollouts.forms import DeploymentForm, RolloutForm
from fleet.rollouts.models import Deployment, Rollout, RolloutStatus, TargetStatus
from fleet.rollouts.strategy import Strategy

ROLLOUTS_PER_PAGE = 25
ACTIONS = ("pause", "resume", "abort", "rollback", "retry")


@viewer_required
def deployment_list(request: HttpRequest) -> HttpResponse:
    return render(request, "rollouts/deployment_list.html", {"deployments": overview.deployments()})


@operator_required
def deployment_new(request: HttpRequest) -> HttpResponse:
    form = DeploymentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            deployment = services.create_deployment(
                request.user, data["name"], data["repo"].repo_id, data["version"], selector=data["selector"],
                nodes=[node.name for node in data["nodes"]], runtime=data["runtime"])
        except FieldError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            messages.success(request, f"Deployment {deployment.name} created.")
            return redirect("deployment-detail", deployment.name)
    return render(request, "rollouts/deployment_new.html", {"form": form})


def _deployment(name: str) -> Deployment:
    return get_object_or_404(Deployment.objects.select_related("model", "desired_version"), name=name)


@viewer_required
def deployment_detail(request: HttpRequest, name: str) -> HttpResponse:
    deployment = _deployment(name)
    [view] = overview.deployments(only=deployment)
    page = paginate(request, deployment.rollouts.select_related("from_version", "to_version", "created_by"),
                    ROLLOUTS_PER_PAGE)
    return render(request, "rollouts/deployment_detail.html", {"view": view, "deployment": view.deployment,
                                                               "page": page, "rollouts": page.object_list})


@operator_required
def rollout_new(request: HttpRequest, name: str) -> HttpResponse:
    deployment = _deployment(name)
    form = RolloutForm(deployment, request.POST or None)
    plan = None
    if request.method == "POST" and form.is_valid():
        try:
            strategy = services.parse_strategy(form.strategy())
            if request.POST.get("action") == "start":
                rollout = services.create_rollout(request.user, deployment, form.cleaned_data["version"],
                                                  strategy.model_dump(mode="json"))
                messages.success(request, f"Rollout {rollout.pk} of {deployment.name} to "
                                          f"{rollout.to_version.revision} started.")
                return redirect("rollout-detail", rollout.pk)
            plan = preview.plan(deployment, form.cleaned_data["version"], strategy)
        except FieldError as error:
            form.add_service_error(error.field, error.message)
    return render(request, "rollouts/rollout_new.html", {"deployment": deployment, "form": form, "plan": plan})


CANARY_LIVE = ("verifying", "committed")  # the canary serves the new version: compare it with the old one


def _waves(targets: list) -> list[dict]:
    members: dict[int, list] = {}
    for target in targets:
        members.setdefault(target.wave, []).append(target)
    waves = []
    for wave in sorted(members):
        done = sum(target.state in ("committed", "skipped") for target in members[wave])
        total = len(members[wave])
        waves.append({"wave": wave, "total": total, "done": done, "percent": int(100 * done / total),
                      "targets": members[wave]})
    return waves


@viewer_required
def rollout_detail(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        rollout, targets, events = overview.rollout_detail(pk)
    except Rollout.DoesNotExist:
        raise Http404("no such rollout") from None
    strategy = Strategy.model_validate(rollout.strategy)
    can_compare = rollout.active and rollout.from_version is not None and strategy.canary != 0
    canary_live = any(t.wave == 0 and (t.on == "new" or t.state in CANARY_LIVE) for t in targets)
    repo = rollout.deployment.repo
    return render(request, "rollouts/rollout_detail.html", {
        "rollout": rollout, "targets": targets, "events": events, "waves": _waves(targets), "strategy": strategy,
        "compare_url": (f"/playground/?compare=1&a={repo}@{rollout.from_version.sha}&b={repo}@{rollout.to_version.sha}"
                        if can_compare else ""),
        "canary_live": canary_live,
        "target_states": list(TargetStatus),
        "states": {"rollout": {s.value: s.colour for s in RolloutStatus},
                   "target": {s.value: s.colour for s in TargetStatus},
                   "labels": {s.value: str(s.label) for s in (*RolloutStatus, *TargetStatus)}},
    })


@operator_required
@require_POST
def rollout_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    rollout = get_object_or_404(Rollout.objects.select_related("deployment__model", "from_version", "to_version"),
                                pk=pk)
    if action not in ACTIONS:
        raise Http404("no such action")
    node = Node.objects.filter(name=request.POST.get("node", "")).first() if action == "retry" else None
    try:
        result = services.act(request.user, rollout, action, node=node, reason=request.POST.get("reason", "")[:300])
    except FieldError as error:
        messages.error(request, f"{action}: {error.message}")
        return redirect("rollout-detail", rollout.pk)
    except transitions.Conflict as error:
        messages.error(request, f"{action}: {error}")
        return redirect("rollout-detail", rollout.pk)
    messages.success(request, f"Rollout {result.pk}: {action} done ({result.get_state_display().lower()}).")
    return redirect("rollout-detail", result.pk)

"""Deployments and rollouts for views, the API and commands: validation that names the field at fault,
then the change, its RolloutEvent rows and an audit record in one transaction."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_slug
from django.db import transaction
from django.utils import timezone
from pydantic import ValidationError

from fleet.accounts import audit
from fleet.hub.models import ApprovalState, HubModel, InstallState, ModelVersion, NodeInstall
from fleet.inventory.models import Node, NodeStatus
from fleet.lib.errors import FieldError
from fleet.rollouts import machine, transitions
from fleet.rollouts.models import ACTIVE_ROLLOUT_STATES, Deployment, Rollout, RolloutEvent, RolloutTarget
from fleet.rollouts.planner import PlanNode, plan_waves
from fleet.rollouts.strategy import Strategy

_SHA_PREFIX = re.compile(r"^[0-9a-f]{7,40}$")
_LABEL = re.compile(r"^[A-Za-z0-9_.\-/]{1,63}$")


class RolloutError(FieldError):
    """A refused deployment or rollout change, naming the field at fault."""


def _actor_name(actor: Any) -> str:
    return actor.get_username() if hasattr(actor, "get_username") else str(actor or "system")


def resolve_version(model: HubModel, ref: ModelVersion | str) -> ModelVersion:
    """A version of ``model`` by object, full or short sha (7+ hex) or revision name; approved only."""
    if isinstance(ref, ModelVersion):
        version = ref if ref.model_id == model.pk else None
    else:
        ref = (ref or "").strip()
        versions = model.versions.all()
        version = versions.filter(sha=ref).first() or versions.filter(revision=ref).first()
        if version is None and _SHA_PREFIX.match(ref):
            matches = list(versions.filter(sha__startswith=ref)[:2])
            if len(matches) > 1:
                raise RolloutError("version", f"{ref!r} matches several versions of {model.repo_id}; "
                                              "give more of the sha")
            version = matches[0] if matches else None
    if version is None:
        raise RolloutError("version", f"{model.repo_id} has no version {ref!s}; add it on the Models page first")
    if version.approval != ApprovalState.APPROVED:
        raise RolloutError("version", f"{version} is not approved; an admin must approve it first")
    return version


def deployment_nodes(deployment: Deployment) -> list[Node]:
    """Its nodes: the explicit list and those whose labels match the selector (revoked nodes never)."""
    explicit = set(deployment.nodes.values_list("pk", flat=True))
    return [node for node in Node.objects.exclude(status=NodeStatus.REVOKED).order_by("name")
            if node.pk in explicit or deployment.selects(node.labels or {})]


def create_deployment(actor: Any, name: str, repo: str, version: ModelVersion | str, *,
                      selector: dict[str, str] | None = None, nodes: list[str] | None = None,
                      runtime: str = "builtin") -> Deployment:
    try:
        validate_slug(name or "")
    except DjangoValidationError:
        raise RolloutError("name", "use letters, digits, - and _ only, e.g. chat-default") from None
    if len(name) > 63:
        raise RolloutError("name", "use at most 63 characters")
    if Deployment.objects.filter(name=name).exists():
        raise RolloutError("name", f"a deployment named {name} exists; choose another name")
    model = HubModel.objects.filter(repo_id=repo).first()
    if model is None:
        raise RolloutError("repo", f"{repo or 'that repo'} is not known; add it on the Models page first")
    desired = resolve_version(model, version)
    selector = selector or {}
    if not isinstance(selector, dict) or not all(
            isinstance(k, str) and _LABEL.match(k) and isinstance(v, str) and len(v) <= 200
            for k, v in selector.items()):
        raise RolloutError("selector", 'give labels as {"key": "value"} with short keys of letters and digits')
    names = list(dict.fromkeys(nodes or []))
    members = list(Node.objects.filter(name__in=names).exclude(status=NodeStatus.REVOKED))
    missing = sorted(set(names) - {node.name for node in members})
    if missing:
        raise RolloutError("nodes", f"no such node (or revoked): {', '.join(missing[:10])}")
    if not selector and not members:
        raise RolloutError("nodes", "choose nodes, or a label selector that picks them")
    if not re.match(r"^[a-z0-9.\-_]{1,32}$", runtime or ""):
        raise RolloutError("runtime", "name a runtime such as builtin, vllm or llama.cpp")
    with transaction.atomic():
        deployment = Deployment.objects.create(
            name=name, model=model, desired_version=desired, selector=selector, runtime=runtime,
            created_by=actor if getattr(actor, "pk", None) else None)
        deployment.nodes.set(members)
        audit.record(actor, "deployment.create", deployment, repo=repo, version=desired.sha, selector=selector,
                     nodes=[node.name for node in members])
    return deployment


def parse_strategy(data: dict[str, Any] | None) -> Strategy:
    """A strategy from its JSON form; an omitted soak is the server's FLEET_ROLLOUT_MIN_READY_SECONDS."""
    if data is not None and not isinstance(data, dict):
        raise RolloutError("strategy", 'give the strategy as an object, e.g. {"canary": 1, "batch": "25%"}')
    try:
        strategy = Strategy.model_validate({"min_ready_seconds": settings.FLEET_ROLLOUT_MIN_READY_SECONDS,
                                            **(data or {})})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RolloutError(f"strategy.{where}" if where else "strategy", first["msg"]) from None
    return strategy


def create_rollout(actor: Any, deployment: Deployment, version: ModelVersion | str,
                   strategy: dict[str, Any] | None = None) -> Rollout:
    """Plan and start a rollout of ``deployment`` to ``version``; a running one is superseded."""
    parsed = parse_strategy(strategy)
    to_version = resolve_version(deployment.model, version)
    nodes = deployment_nodes(deployment)
    if not nodes:
        raise RolloutError("deployment", f"{deployment.name} selects no nodes; add nodes or change its selector")
    active = Rollout.objects.filter(deployment=deployment, state__in=ACTIVE_ROLLOUT_STATES).first()
    if to_version.pk == deployment.desired_version_id and active is None:
        raise RolloutError("version", f"{deployment.name} already runs {to_version}; choose another version")
    serving = set(NodeInstall.objects.filter(node__in=nodes, repo=deployment.repo, sha=to_version.sha,
                                             state=InstallState.ACTIVE).values_list("node_id", flat=True))
    waves = plan_waves([PlanNode(n.pk, n.name, n.labels or {}) for n in nodes], parsed)
    with transaction.atomic():
        if active is not None:
            transitions.apply(active.pk, [machine.Supersede()], actor)
        rollout = Rollout.objects.create(
            deployment=deployment, from_version=deployment.desired_version, to_version=to_version,
            strategy=parsed.model_dump(mode="json"), created_by=actor if getattr(actor, "pk", None) else None)
        planned = [(wave, member.id) for wave, members in enumerate(waves) for member in members]
        RolloutTarget.objects.bulk_create([
            RolloutTarget(rollout=rollout, node_id=node_id, position=position, wave=wave,
                          on="new" if node_id in serving else "old")
            for position, (wave, node_id) in enumerate(planned)
        ])
        why = f"{deployment.name} to {to_version} on {len(nodes)} nodes in {len(waves)} waves"
        RolloutEvent.objects.create(rollout=rollout, from_state="", to_state="pending", why=why,
                                    actor_name=_actor_name(actor))
        if active is not None:
            Rollout.objects.filter(pk=active.pk).update(reason=f"superseded by rollout {rollout.pk}")
        audit.record(actor, "rollout.create", rollout, deployment=deployment.name, version=to_version.sha,
                     strategy=parsed.model_dump(mode="json"))
        transitions.apply(rollout.pk, [machine.Tick()], actor)  # stage everywhere now, not at the next tick
    rollout.refresh_from_db()
    return rollout


def act(actor: Any, rollout: Rollout, action: str, *, node: Node | None = None, reason: str = "") -> Rollout:
    """An operator's pause, resume, abort, rollback or retry (of ``node``), audited; refused with the reason
    when it does not fit the rollout's state."""
    who = _actor_name(actor)
    events: dict[str, machine.Event] = {
        "pause": machine.Pause(reason=reason or f"paused by {who}"),
        "resume": machine.Resume(),
        "abort": machine.Abort(reason=reason or f"aborted by {who}"),
        "rollback": machine.Rollback(reason=reason or f"rolled back by {who}"),
    }
    if action == "retry":
        if node is None:
            raise RolloutError("node", "choose the failed node to retry")
        events["retry"] = machine.RetryTarget(node.pk)
    if action not in events:
        raise RolloutError("action", "use pause, resume, abort, rollback or retry")
    if action == "rollback" and rollout.state == machine.RolloutState.SUCCEEDED:
        return roll_back_finished(actor, rollout)
    with transaction.atomic():
        try:
            transitions.apply(rollout.pk, [events[action]], actor, now=timezone.now())
        except machine.Rejected as refused:
            raise RolloutError("action", str(refused), status=409) from None
        audit.record(actor, f"rollout.{action}", rollout, **({"node": node.name} if node else {}),
                     **({"reason": reason} if reason else {}))
    rollout.refresh_from_db()
    return rollout


FAST_TRACK = {"canary": 0, "batch": "100%", "max_unavailable": "25%", "min_ready_seconds": 0, "healthcheck": None}


def roll_back_finished(actor: Any, rollout: Rollout) -> Rollout:
    """Undo a rollout that succeeded: a fast-track rollout (no canary, one wave) back to its old version."""
    deployment = rollout.deployment
    if rollout.from_version is None:
        raise RolloutError("action", "this rollout has no previous version to return to")
    newest = deployment.rollouts.order_by("-created_at", "-id").first()
    if newest is not None and newest.pk != rollout.pk:
        raise RolloutError("action", f"rollout {newest.pk} came after this one; roll that one back instead",
                           status=409)
    strategy = {**rollout.strategy, **FAST_TRACK}
    back = create_rollout(actor, deployment, rollout.from_version, strategy)
    audit.record(actor, "rollout.rollback", rollout, new_rollout=back.pk)
    return back

"""Read models of deployments and rollouts for the JSON API and the pages: a fixed number of queries
whatever the number of deployments, nodes or targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import OuterRef, Subquery

from fleet.hub.models import InstallState, ModelVersion, NodeCommand, NodeInstall
from fleet.inventory.models import Node, NodeStatus
from fleet.rollouts.models import ACTIVE_ROLLOUT_STATES, Deployment, Rollout, RolloutEvent, RolloutTarget


def version_ref(version: ModelVersion | None) -> dict[str, str] | None:
    return {"sha": version.sha, "revision": version.revision} if version is not None else None


@dataclass
class NodeView:
    name: str
    status: str
    serving: dict[str, str] | None  # the version of the deployment's repo it serves now
    in_sync: bool

    @property
    def status_colour(self) -> str:
        return NodeStatus(self.status).colour


@dataclass
class DeploymentView:
    deployment: Deployment
    nodes: list[NodeView] = field(default_factory=list)
    rollout: Rollout | None = None  # the newest one

    @property
    def in_sync(self) -> int:
        return sum(node.in_sync for node in self.nodes)


def deployments(only: Deployment | None = None) -> list[DeploymentView]:
    """Every deployment (or ``only`` that one) with its nodes, what each serves and its newest rollout."""
    newest = Rollout.objects.filter(deployment=OuterRef("pk")).order_by("-created_at", "-id").values("pk")[:1]
    query = (Deployment.objects.select_related("model", "desired_version").prefetch_related("nodes")
             .annotate(newest_rollout=Subquery(newest)))
    if only is not None:
        query = query.filter(pk=only.pk)
    rows = list(query)
    if not rows:
        return []
    rollouts = {r.pk: r for r in Rollout.objects.select_related("to_version", "from_version").filter(
        pk__in=[row.newest_rollout for row in rows if row.newest_rollout])}
    nodes = list(Node.objects.exclude(status=NodeStatus.REVOKED).order_by("name").only("name", "status", "labels"))
    serving: dict[tuple[int, str], dict[str, str]] = {
        (node_id, repo): {"sha": sha, "revision": revision or sha[:12]}
        for node_id, repo, sha, revision in NodeInstall.objects.filter(
            state=InstallState.ACTIVE, repo__in={row.model.repo_id for row in rows}
        ).values_list("node_id", "repo", "sha", "version__revision")}
    views = []
    for row in rows:
        if row.newest_rollout in rollouts:
            rollouts[row.newest_rollout].deployment = row
        explicit = {node.pk for node in row.nodes.all()}
        members = [node for node in nodes if node.pk in explicit or row.selects(node.labels or {})]
        views.append(DeploymentView(row, [
            NodeView(node.name, node.status, serving.get((node.pk, row.repo)),
                     serving.get((node.pk, row.repo), {}).get("sha") == row.desired_version.sha)
            for node in members], rollouts.get(row.newest_rollout)))
    return views


def deployment_json(view: DeploymentView) -> dict[str, Any]:
    row = view.deployment
    return {
        "name": row.name, "repo": row.repo, "version": version_ref(row.desired_version),
        "selector": row.selector, "runtime": row.runtime,
        "nodes": [{"name": n.name, "status": n.status, "serving": n.serving, "in_sync": n.in_sync}
                  for n in view.nodes],
        "rollout": rollout_summary(view.rollout) if view.rollout is not None else None,
    }


def rollout_summary(rollout: Rollout) -> dict[str, Any]:
    return {
        "id": rollout.pk, "deployment": rollout.deployment.name, "state": rollout.state,
        "reason": rollout.reason, "pause_reason": rollout.pause_reason,
        "from_version": version_ref(rollout.from_version), "to_version": version_ref(rollout.to_version),
        "created_at": rollout.created_at, "finished_at": rollout.finished_at,
    }


EVENTS_SHOWN = 200


def rollout_detail(rollout_id: int) -> tuple[Rollout, list[RolloutTarget], list[RolloutEvent]]:
    """A rollout with its targets (their node names, and the bytes of the downloads under way as
    ``bytes_done``/``bytes_total``/``bytes_per_second``) and its newest events; five queries at most."""
    rollout = Rollout.objects.select_related("deployment__model", "from_version", "to_version", "created_by").get(
        pk=rollout_id)
    targets = list(RolloutTarget.objects.filter(rollout=rollout).select_related("node").only(
        "node__name", "node__status", "rollout_id", "position", "wave", "state", "on", "attempt", "error",
        "command_id", "updated_at").order_by("position", "id"))
    downloading = [t.command_id for t in targets if t.state in ("scheduled", "downloading") and t.command_id]
    progress = {command_id: (done, total, rate) for command_id, done, total, rate in NodeCommand.objects.filter(
        command_id__in=downloading).values_list("command_id", "bytes_done", "bytes_total", "bytes_per_second")
    } if downloading else {}
    for target in targets:
        target.bytes_done, target.bytes_total, target.bytes_per_second = progress.get(target.command_id, (0, 0, 0))
        target.percent = int(100 * target.bytes_done / target.bytes_total) if target.bytes_total else 0
    events = list(RolloutEvent.objects.filter(rollout=rollout).select_related("target__node").only(
        "from_state", "to_state", "why", "actor_name", "created_at", "rollout_id", "target__node__name")
        .order_by("-id")[:EVENTS_SHOWN])
    return rollout, targets, events


def rollout_json(rollout: Rollout, targets: list[RolloutTarget], events: list[RolloutEvent] | None = None
                 ) -> dict[str, Any]:
    data = {
        **rollout_summary(rollout), "deployment": rollout.deployment.name, "repo": rollout.deployment.repo,
        "strategy": rollout.strategy,
        "created_by": rollout.created_by.get_username() if rollout.created_by else None,
        "targets": [{"node": t.node.name, "wave": t.wave, "state": t.state, "on": t.on, "attempt": t.attempt,
                     "error": t.error, "bytes_done": getattr(t, "bytes_done", 0),
                     "bytes_total": getattr(t, "bytes_total", 0),
                     "bytes_per_second": getattr(t, "bytes_per_second", 0)} for t in targets],
    }
    if events is not None:
        data["events"] = [{"at": e.created_at, "node": e.target.node.name if e.target else None,
                           "from_state": e.from_state, "to_state": e.to_state, "why": e.why, "by": e.actor_name}
                          for e in events]
    return data


@dataclass
class Membership:
    deployment: Deployment
    serving: dict[str, str] | None
    in_sync: bool
    rollout: Rollout | None  # a rollout of it under way


def node_deployments(node: Node) -> list[Membership]:
    """The deployments ``node`` belongs to, each with what it wants and what the node serves; three
    queries (the deployments with their listed nodes, the node's installs, the rollouts under way)."""
    rows = [row for row in Deployment.objects.select_related("model", "desired_version").prefetch_related("nodes")
            if any(member.pk == node.pk for member in row.nodes.all()) or row.selects(node.labels or {})]
    if not rows:
        return []
    serving = {repo: {"sha": sha, "revision": revision or sha[:12]} for repo, sha, revision in
               NodeInstall.objects.filter(node=node, state=InstallState.ACTIVE).values_list(
                   "repo", "sha", "version__revision")}
    running = {r.deployment_id: r for r in Rollout.objects.filter(
        deployment__in=rows, state__in=ACTIVE_ROLLOUT_STATES).select_related("to_version")}
    return [Membership(row, serving.get(row.repo), serving.get(row.repo, {}).get("sha") == row.desired_version.sha,
                       running.get(row.pk)) for row in rows]

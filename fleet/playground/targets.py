"""Where a chat goes: the least-busy online node whose runtime for the model (and version) is ready.

Busy = chats this server process has in flight on the node (counted as they start and end) plus what
the node last reported in flight (`NodeRuntime.requests_active`, which covers the other processes'
chats with a delay). Failed runtimes and nodes that are not online are never chosen.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fleet.hub.models import HubModel, ModelVersion
from fleet.inventory.models import Node, NodeRuntime, NodeStatus, RuntimeState
from fleet.inventory.runtimes import ready_runtimes
from fleet.rollouts.models import ACTIVE_ROLLOUT_STATES, Deployment, Rollout

SHA = re.compile(r"^[0-9a-f]{40}$")
inflight: Counter[int] = Counter()  # node id → chats in flight from this process (fleet.playground.relay)


@dataclass(frozen=True)
class Target:
    node_id: int
    node_name: str
    repo: str
    sha: str
    runtime: str
    revision: str | None = None


class NoTarget(Exception):
    """Nothing can answer; ``code`` tells an unknown model (``model_not_found``) from one that exists but
    has no ready node now (``no_ready_node``); the message says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve_model(name: str) -> tuple[str, str | None]:
    """The one hook for model names: map a requested ``model`` to (repo, pinned sha or None).

    A repo id (ORG/NAME) is itself. A deployment name (``chat-default``, never with a ``/``) is the
    deployment's repo at the version it serves; while one of its rollouts runs, the fleet is between two
    versions, so any ready version of that repo answers.
    """
    if "/" in name:
        return name, None
    deployment = Deployment.objects.select_related("model", "desired_version").filter(name=name).first()
    if deployment is None:
        return name, None
    rolling = Rollout.objects.filter(deployment=deployment, state__in=ACTIVE_ROLLOUT_STATES).exists()
    return deployment.repo, None if rolling else deployment.desired_version.sha


def _revisions(pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    if not pairs:
        return {}
    repos = {repo for repo, _ in pairs}
    shas = {sha for _, sha in pairs}
    rows = ModelVersion.objects.filter(model__repo_id__in=repos, sha__in=shas).values_list(
        "model__repo_id", "sha", "revision")
    return {(repo, sha): revision for repo, sha, revision in rows if (repo, sha) in pairs}


def candidates(model: str | None, sha: str | None = None, node_id: int | None = None) -> list[Target]:
    """Ready targets, least busy first. Raises NoTarget with a message that says what to do."""
    repo, pinned = resolve_model(model) if model else (None, None)
    sha = sha or pinned
    if sha is not None and not SHA.match(sha):
        raise NoTarget("invalid_sha", "sha: must be a full 40-character lower-case hex commit id")
    rows = list(ready_runtimes(repo, sha, node_id))
    if not rows:
        raise _why_none(model, repo, sha, node_id)
    if node_id is not None and repo is None and len({row.repo for row in rows}) > 1:
        served = ", ".join(sorted({row.repo for row in rows}))
        raise NoTarget("model_required", f"model: node {rows[0].node.name} serves several models ({served}); "
                                         "name the one to chat with")
    revisions = _revisions({(row.repo, row.sha) for row in rows})
    rows.sort(key=lambda row: (inflight[row.node_id] + row.requests_active, row.node.name))
    return [Target(row.node_id, row.node.name, row.repo, row.sha, row.runtime, revisions.get((row.repo, row.sha)))
            for row in rows]


def _why_none(model: str | None, repo: str | None, sha: str | None, node_id: int | None) -> NoTarget:
    if node_id is not None:
        node = Node.objects.filter(pk=node_id).first()
        if node is None:
            return NoTarget("node_not_found", f"node: there is no node with id {node_id}")
        if node.status != NodeStatus.ONLINE:
            return NoTarget("no_ready_node", f"node {node.name} is {node.get_status_display().lower()}; "
                                             "pick an online node")
        what = f"{repo}" + (f"@{sha[:12]}" if sha else "") if repo else "any model"
        return NoTarget("no_ready_node", f"node {node.name} has no ready runtime for {what}; deploy and activate "
                                         "it there (Models page), or wait until its runtime is ready")
    known = NodeRuntime.objects.filter(repo=repo).exists() or HubModel.objects.filter(repo_id=repo).exists()
    if not known:
        return NoTarget("model_not_found", f"model: {model!r} is not a model this fleet knows; use a repo id "
                                           "such as ORG/NAME from the Models page (or GET /v1/models)")
    version = f"{repo}@{sha[:12]}" if sha else repo
    failed = NodeRuntime.objects.filter(repo=repo, state=RuntimeState.FAILED, node__status=NodeStatus.ONLINE)
    hint = " (its runtime failed on: " + ", ".join(failed.values_list("node__name", flat=True)[:5]) + ")" \
        if failed.exists() else ""
    return NoTarget("no_ready_node", f"no online node is serving {version} ready right now{hint}; deploy and "
                                     "activate it on a node, or try again once a runtime is ready")


def served_models() -> list[str]:
    """Repo ids with at least one ready runtime on an online node, and the deployments that can answer
    now (for /v1/models)."""
    ready = set(ready_runtimes().values_list("repo", "sha"))
    repos = {repo for repo, _ in ready}
    rolling = set(Rollout.objects.filter(state__in=ACTIVE_ROLLOUT_STATES).values_list("deployment_id", flat=True))
    deployments = [name for pk, name, repo, sha in Deployment.objects.filter(model__repo_id__in=repos).values_list(
        "pk", "name", "model__repo_id", "desired_version__sha") if (repo, sha) in ready or pk in rolling]
    return sorted(repos) + sorted(deployments)


def listing() -> dict[str, Any]:
    """`GET /playground/targets/`: ready models with their versions, and every node's runtimes."""
    nodes = list(Node.objects.exclude(status=NodeStatus.REVOKED).order_by("name"))
    runtimes = list(NodeRuntime.objects.filter(node__in=nodes).order_by("node_id", "repo"))
    revisions = _revisions({(r.repo, r.sha) for r in runtimes})
    online = {node.pk for node in nodes if node.status == NodeStatus.ONLINE}
    models: dict[str, dict[str, Any]] = {}
    by_node: dict[int, list[dict[str, Any]]] = {}
    for runtime in runtimes:
        revision = revisions.get((runtime.repo, runtime.sha))
        by_node.setdefault(runtime.node_id, []).append({
            "repo": runtime.repo, "sha": runtime.sha, "revision": revision, "runtime": runtime.runtime,
            "state": runtime.state, "reason": runtime.reason,
        })
        if runtime.state != RuntimeState.READY or runtime.node_id not in online:
            continue
        entry = models.setdefault(runtime.repo, {"model": runtime.repo, "ready_nodes": 0, "versions": {}})
        entry["ready_nodes"] += 1
        version = entry["versions"].setdefault(runtime.sha, {"sha": runtime.sha, "revision": revision,
                                                             "ready_nodes": 0})
        version["ready_nodes"] += 1
    return {
        "models": [{**entry, "versions": list(entry["versions"].values())}
                   for _, entry in sorted(models.items())],
        "nodes": [{"id": node.pk, "name": node.name, "status": node.status, "runtimes": by_node.get(node.pk, [])}
                  for node in nodes],
    }

"""The engine's `deployments` task: every online node of a deployment converges to its desired version
while no rollout of that deployment runs (a node that was offline through a rollout, a node that joined
the deployment later, a node left on the new version after an aborted rollout).

Each node gets one deploy-and-activate command per (deployment, latest rollout, version, try), under a stable
id: resent, it is never done twice, and a node that converged to v1 before a rollout moved it on can converge
to v1 again after the next one (a new id). A node that failed MAX_TRIES times is left alone (its node page
shows why), and so is a node whose target failed in the deployment's latest (successful) rollout: retrying
that is an operator's call, not the engine's.
"""

from __future__ import annotations

import logging
from collections import Counter

from django.db import transaction

from fleet.hub import commands as hub_commands
from fleet.hub.models import CommandKind, CommandState, InstallState, NodeCommand, NodeInstall
from fleet.inventory.models import NodeStatus
from fleet.rollouts.models import ACTIVE_ROLLOUT_STATES, Deployment, Rollout
from fleet.rollouts.services import deployment_nodes

log = logging.getLogger(__name__)
INTERVAL = 5.0
MAX_TRIES = 3


def _epoch(deployment: Deployment, latest: Rollout | None) -> str:
    return f"dep{deployment.pk}-r{latest.pk if latest else 0}-n"


def command_prefix(deployment: Deployment, latest: Rollout | None, node_id: int) -> str:
    return f"{_epoch(deployment, latest)}{node_id}-{deployment.desired_version.sha[:12]}-"


def converge(deployment: Deployment) -> list[str]:
    """Queue what this deployment's online nodes lack; returns the command ids queued."""
    nodes = [node for node in deployment_nodes(deployment) if node.status == NodeStatus.ONLINE]
    if not nodes:
        return []
    repo, desired = deployment.repo, deployment.desired_version
    ids = [node.pk for node in nodes]
    serving = dict(NodeInstall.objects.filter(node_id__in=ids, repo=repo, state=InstallState.ACTIVE)
                   .values_list("node_id", "sha"))
    busy = set(NodeCommand.objects.filter(node_id__in=ids, repo=repo, finished_at__isnull=True)
               .values_list("node_id", flat=True))
    latest = Rollout.objects.filter(deployment=deployment).order_by("-created_at", "-id").first()
    failed_there: set[int] = set()
    if latest is not None and latest.state == "succeeded":  # within its budget, and back on the old version
        failed_there = set(latest.targets.filter(state="failed").values_list("node_id", flat=True))
    tries = Counter(NodeCommand.objects.filter(
        node_id__in=ids, command_id__startswith=_epoch(deployment, latest), sha=desired.sha, state=CommandState.FAILED,
    ).values_list("node_id", flat=True))
    items = []
    for node in nodes:
        if serving.get(node.pk) == desired.sha or node.pk in busy or node.pk in failed_there:
            continue
        if tries[node.pk] >= MAX_TRIES:
            continue
        command_id = f"{command_prefix(deployment, latest, node.pk)}{tries[node.pk]}"
        items.append((node, CommandKind.DEPLOY, desired, command_id))
    if not items:
        return []
    with transaction.atomic():
        queued = hub_commands.ensure("engine", items, activate=True)
    if queued:
        log.info("deployment %s: %d node(s) converging to %s", deployment.name, len(queued), desired)
    return queued


def tick() -> int:
    """The engine task: converge every deployment without a running rollout. Returns commands queued."""
    running = set(Rollout.objects.filter(state__in=ACTIVE_ROLLOUT_STATES).values_list("deployment_id", flat=True))
    queued = 0
    for deployment in Deployment.objects.select_related("model", "desired_version").exclude(pk__in=running):
        try:
            queued += len(converge(deployment))
        except Exception:
            log.exception("converging deployment %s failed; the next pass retries", deployment.name)
    return queued

"""Rollout series for `/metrics`, so that Prometheus can alert on a stalled or aborted rollout:

- ``fleet_rollout_active{deployment,state}``: 1 for the deployment's running rollout (at most one each)
- ``fleet_rollout_stalled{deployment}``: 1 while it is paused because nothing moved for its progress deadline
- ``fleet_rollout_targets{deployment,state}``: its targets by state
- ``fleet_deployment_nodes{deployment}`` / ``fleet_deployment_nodes_in_sync{deployment}``: members, and those
  serving the deployment's version
- ``fleet_rollouts_finished_total{deployment,state}``: finished rollouts by how they ended

Registered with the exporter by the app (the telemetry layer does not import rollouts).
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fleet.hub.models import InstallState, NodeInstall
from fleet.inventory.models import Node, NodeStatus
from fleet.rollouts.models import ACTIVE_ROLLOUT_STATES, Deployment, Rollout, RolloutTarget

STALLED_PREFIX = "no progress for "  # the machine's pause reason when the progress deadline passes


def families() -> Iterator[Metric]:
    active = GaugeMetricFamily("fleet_rollout_active", "Running rollouts (1 each), by deployment and state.",
                               labels=["deployment", "state"])
    stalled = GaugeMetricFamily("fleet_rollout_stalled",
                                "1 while a rollout is paused because nothing moved for its progress deadline.",
                                labels=["deployment"])
    running = list(Rollout.objects.filter(state__in=ACTIVE_ROLLOUT_STATES)
                   .values_list("pk", "deployment__name", "state", "pause_reason"))
    names = {}
    for pk, deployment, state, pause_reason in running:
        names[pk] = deployment
        active.add_metric([deployment, state], 1)
        stalled.add_metric([deployment], float(state == "paused" and pause_reason.startswith(STALLED_PREFIX)))
    targets = GaugeMetricFamily("fleet_rollout_targets", "Targets of running rollouts by state.",
                                labels=["deployment", "state"])
    for rollout_id, state, count in (RolloutTarget.objects.filter(rollout_id__in=names)
                                     .values_list("rollout_id", "state").annotate(n=Count("id")).order_by()):
        targets.add_metric([names[rollout_id], state], count)
    finished = CounterMetricFamily("fleet_rollouts_finished", "Finished rollouts by how they ended.",
                                   labels=["deployment", "state"])
    for deployment, state, count in (Rollout.objects.exclude(state__in=ACTIVE_ROLLOUT_STATES)
                                     .values_list("deployment__name", "state").annotate(n=Count("id")).order_by()):
        finished.add_metric([deployment, state], count)
    yield from (active, stalled, targets, finished, *_membership())


def _membership() -> list[Metric]:
    members = GaugeMetricFamily("fleet_deployment_nodes", "Nodes a deployment selects (revoked ones never).",
                                labels=["deployment"])
    in_sync = GaugeMetricFamily("fleet_deployment_nodes_in_sync", "Of those, nodes serving its desired version.",
                                labels=["deployment"])
    deployments = list(Deployment.objects.select_related("model", "desired_version")
                       .prefetch_related("nodes").order_by("name"))
    if not deployments:
        return [members, in_sync]
    nodes = list(Node.objects.exclude(status=NodeStatus.REVOKED).values_list("pk", "labels"))
    serving = set(NodeInstall.objects.filter(state=InstallState.ACTIVE).values_list("node_id", "repo", "sha"))
    for deployment in deployments:
        explicit = {node.pk for node in deployment.nodes.all()}
        chosen = [pk for pk, labels in nodes if pk in explicit or deployment.selects(labels or {})]
        members.add_metric([deployment.name], len(chosen))
        in_sync.add_metric([deployment.name], sum(
            (pk, deployment.repo, deployment.desired_version.sha) in serving for pk in chosen))
    return [members, in_sync]

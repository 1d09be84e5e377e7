"""What a rollout would do, before it starts: its waves with node names and, per node, the bytes it must
download (only the blobs of the new version it holds in none of its installed versions). Three queries
whatever the number of nodes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from fleet.hub.models import ModelVersion, NodeInstall, VersionFile
from fleet.rollouts.models import Deployment
from fleet.rollouts.planner import PlanNode, max_unavailable, plan_waves
from fleet.rollouts.services import deployment_nodes
from fleet.rollouts.strategy import Strategy


@dataclass(frozen=True)
class PlannedNode:
    name: str
    download_bytes: int
    serving_new: bool


@dataclass(frozen=True)
class Plan:
    waves: list[list[PlannedNode]]
    max_unavailable: int
    total_download: int

    @property
    def node_count(self) -> int:
        return sum(len(wave) for wave in self.waves)


def plan(deployment: Deployment, version: ModelVersion, strategy: Strategy) -> Plan:
    nodes = deployment_nodes(deployment)
    blobs = dict(VersionFile.objects.filter(version=version).values_list("blob_id", "blob__size"))
    held_versions: dict[int, set[int]] = defaultdict(set)
    serving_new: set[int] = set()
    for node_id, version_id, sha, state in NodeInstall.objects.filter(
            node__in=nodes, version__isnull=False).values_list("node_id", "version_id", "sha", "state"):
        held_versions[node_id].add(version_id)
        if sha == version.sha and state == "active":
            serving_new.add(node_id)
    held_blobs: dict[int, set[int]] = defaultdict(set)
    all_versions = set().union(*held_versions.values()) if held_versions else set()
    for version_id, blob_id in VersionFile.objects.filter(version_id__in=all_versions, blob_id__in=blobs
                                                          ).values_list("version_id", "blob_id"):
        held_blobs[version_id].add(blob_id)

    def missing(node_id: int) -> int:
        have = set().union(*(held_blobs[v] for v in held_versions[node_id])) if held_versions[node_id] else set()
        return sum(size for blob, size in blobs.items() if blob not in have)

    waves = [[PlannedNode(member.name, missing(member.id), member.id in serving_new) for member in wave]
             for wave in plan_waves([PlanNode(n.pk, n.name, n.labels or {}) for n in nodes], strategy)]
    return Plan(waves, max_unavailable(strategy, len(nodes)),
                sum(node.download_bytes for wave in waves for node in wave))

"""Read-side helpers: the fleet summary and the node payload sent to browsers."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, Sum

from fleet.inventory.models import Gpu, GpuState, Node, NodeStatus


def fleet_summary() -> dict[str, Any]:
    nodes = Node.objects.aggregate(
        total=Count("id"),
        online=Count("id", filter=Q(status=NodeStatus.ONLINE)),
        offline=Count("id", filter=Q(status=NodeStatus.OFFLINE)),
        never_seen=Count("id", filter=Q(status=NodeStatus.NEVER_SEEN)),
        revoked=Count("id", filter=Q(status=NodeStatus.REVOKED)),
        gpu_servers=Count("id", filter=Q(kind="gpu_server")),
        edge_devices=Count("id", filter=Q(kind="edge_device")),
        cpu_nodes=Count("id", filter=Q(kind="cpu_node")),
    )
    gpus = Gpu.objects.filter(state=GpuState.PRESENT).aggregate(
        total=Count("id"),
        online=Count("id", filter=Q(node__status=NodeStatus.ONLINE)),
        memory=Sum("memory_total_bytes"),
    )
    return {
        "nodes": nodes,
        "gpus": {"total": gpus["total"], "online": gpus["online"], "memory_bytes": gpus["memory"] or 0},
        "gpus_lost": Gpu.objects.filter(state=GpuState.LOST).count(),
    }


def with_gpu_counts(queryset):
    return queryset.annotate(
        gpu_count=Count("gpus", filter=Q(gpus__state=GpuState.PRESENT)),
        gpu_memory=Sum("gpus__memory_total_bytes", filter=Q(gpus__state=GpuState.PRESENT)),
    )


def node_payload(node: Node) -> dict[str, Any]:
    """What a browser needs to redraw one node's row and badge."""
    gpu_count = getattr(node, "gpu_count", None)
    gpu_memory = getattr(node, "gpu_memory", None)
    if gpu_count is None:
        present = node.gpus.filter(state=GpuState.PRESENT).aggregate(
            count=Count("id"), memory=Sum("memory_total_bytes")
        )
        gpu_count, gpu_memory = present["count"], present["memory"]
    return {
        "id": node.pk,
        "name": node.name,
        "kind": node.kind,
        "kind_label": node.get_kind_display(),
        "hostname": node.hostname,
        "status": node.status,
        "status_label": node.get_status_display(),
        "status_colour": node.status_colour,
        "last_seen": node.last_seen.isoformat() if node.last_seen else None,
        "gpu_count": gpu_count,
        "gpu_memory_bytes": gpu_memory or 0,
        "agent_version": node.agent_version,
    }

"""Node kind follows what the agent finds (GPUs, a Jetson, neither), but an edge device stays one."""

from __future__ import annotations

import json

import pytest

from fleet.agent.protocol import parse_agent_frame
from fleet.agents.presence import record_hello
from fleet.inventory.models import NodeKind
from fleet.inventory.queries import fleet_summary
from tests.server.test_agent_socket import hello


@pytest.mark.parametrize("before, claimed, after", [
    (NodeKind.GPU_SERVER, "cpu_node", NodeKind.CPU_NODE),  # enrolled before agents typed themselves
    (NodeKind.CPU_NODE, "gpu_server", NodeKind.GPU_SERVER),  # a GPU was put in
    (NodeKind.GPU_SERVER, "edge_device", NodeKind.EDGE_DEVICE),  # a Jetson
    (NodeKind.EDGE_DEVICE, "cpu_node", NodeKind.EDGE_DEVICE),  # an edge box without a GPU stays edge
    (NodeKind.EDGE_DEVICE, "gpu_server", NodeKind.EDGE_DEVICE),
    (NodeKind.CPU_NODE, None, NodeKind.CPU_NODE),  # the agent unsure (driver failing): kept
])
def test_kind_from_hello(make_node, before, claimed, after):
    node, _ = make_node(kind=before)
    frame = hello(gpus=0 if claimed != "gpu_server" else 2, **({"kind": claimed} if claimed else {}))
    record_hello(node.pk, parse_agent_frame(json.dumps(frame)))
    node.refresh_from_db()
    assert node.kind == after


def test_summary_counts_cpu_nodes(make_node):
    make_node("cpu-1", kind=NodeKind.CPU_NODE)
    make_node("gpu-1", kind=NodeKind.GPU_SERVER)
    nodes = fleet_summary()["nodes"]
    assert (nodes["cpu_nodes"], nodes["gpu_servers"], nodes["edge_devices"]) == (1, 1, 0)

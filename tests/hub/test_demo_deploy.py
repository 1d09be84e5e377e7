"""`make demo` deploys SmolLM2 v1 to the simulated GPU servers and the tiny model to the edge devices, with
activation, through the ordinary model commands, once per node."""

from __future__ import annotations

import pytest
from django.utils import timezone

from fleet import demo
from fleet.hub.importer import import_folder
from fleet.hub.models import ApprovalState, CommandKind, CommandState, InstallState, NodeCommand, NodeInstall
from fleet.inventory.models import NodeKind
from tests.hub.conftest import write_folder

NODES = demo.parse_nodes(demo.DEFAULT_NODES)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


def test_the_plan_puts_smollm2_on_gpu_servers_and_the_tiny_model_on_edge_devices() -> None:
    plan = demo.deploy_plan(NODES, {NodeKind.GPU_SERVER: "smollm2@v1", NodeKind.EDGE_DEVICE: "tiny@v1"})
    assert [(node.name, model) for node, model in plan] == [
        ("gpu-01", "smollm2@v1"), ("gpu-02", "smollm2@v1"), ("gpu-03", "smollm2@v1"),
        *[(f"edge-{n:02d}", "tiny@v1") for n in range(1, 6)]]
    assert [node.name for node, _ in demo.deploy_plan(NODES, {NodeKind.EDGE_DEVICE: "tiny@v1"})] == [
        f"edge-{n:02d}" for n in range(1, 6)]  # a kind without a model gets nothing


@pytest.fixture
def versions(tmp_path, hub_root):
    made = {}
    for repo, kind in (("acme/big", NodeKind.GPU_SERVER), ("acme/tiny", NodeKind.EDGE_DEVICE)):
        folder = write_folder(tmp_path / repo, {"config.json": b"{}", "model.safetensors": repo.encode() * 100})
        made[kind], _ = import_folder("test", folder, repo, "v1")
    return made


@pytest.mark.django_db
def test_each_node_gets_one_deploy_with_activation_and_a_restart_adds_none(make_node, versions) -> None:
    nodes = {node.name: make_node(node.name, kind=node.kind)[0] for node in NODES}
    plan = demo.deploy_plan(NODES, versions)
    out = Lines()
    assert demo.deploy_missing(plan, out) == 8 and out.lines == []
    commands = {c.node.name: c for c in NodeCommand.objects.select_related("node", "version")}
    assert {name: (c.kind, c.activate, c.repo, c.version_id) for name, c in commands.items()} == {
        node.name: (CommandKind.DEPLOY, True, versions[node.kind].model.repo_id, versions[node.kind].pk)
        for node in NODES}

    assert demo.deploy_missing(plan, out) == 0  # still on their way: the agents get them when they connect

    # The agents reported: active everywhere, except gpu-02 where an operator rolled on to another version
    # and edge-05 whose deploy failed.
    for command in commands.values():
        failed = command.node.name == "edge-05"
        NodeCommand.objects.filter(pk=command.pk).update(
            state=CommandState.FAILED if failed else CommandState.ACTIVE, finished_at=timezone.now())
        if not failed:
            sha = "f" * 40 if command.node.name == "gpu-02" else command.sha
            NodeInstall.objects.create(node=command.node, repo=command.repo, sha=sha, state=InstallState.ACTIVE)
    assert demo.deploy_missing(plan, out) == 1  # a restarted demo redeploys only the failed one
    latest = NodeCommand.objects.latest("id")
    assert (latest.node_id, latest.state, latest.activate) == (nodes["edge-05"].pk, CommandState.PENDING, True)


@pytest.mark.django_db
def test_a_refused_deploy_is_reported_and_the_rest_go_on(make_node, versions) -> None:
    for node in NODES:
        make_node(node.name, kind=node.kind)
    versions[NodeKind.GPU_SERVER].approval = ApprovalState.PENDING
    versions[NodeKind.GPU_SERVER].save()
    out = Lines()
    assert demo.deploy_missing(demo.deploy_plan(NODES, versions), out) == 5
    assert len(out.lines) == 3 and all("is not approved" in line for line in out.lines)

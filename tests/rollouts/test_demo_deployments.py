"""`make demo` serves through deployments: `chat-default` (SmolLM2 v1) on the GPU servers and `edge-default`
(the tiny model) on the edge devices, selected by the `role` label the demo's agents carry; the engine's
convergence deploys and activates each node once, and a restarted demo keeps what an operator rolled to."""

from __future__ import annotations

import pytest
from django.utils import timezone

from fleet import demo
from fleet.hub.importer import import_folder
from fleet.hub.models import ApprovalState, CommandKind, CommandState, InstallState, NodeCommand, NodeInstall
from fleet.inventory.models import NodeKind, NodeStatus
from fleet.rollouts import converge
from fleet.rollouts.models import Deployment, Rollout
from tests.hub.conftest import write_folder

NODES = demo.parse_nodes(demo.DEFAULT_NODES)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


def test_demo_nodes_carry_the_role_their_deployment_selects_and_alternate_zones() -> None:
    assert {node.name: node.labels for node in NODES if node.name in {"gpu-01", "gpu-02", "edge-05"}} == {
        "gpu-01": {"role": "chat", "zone": "a"}, "gpu-02": {"role": "chat", "zone": "b"},
        "edge-05": {"role": "edge", "zone": "a"}}
    assert NODES[0].label_args() == ["--label", "role=chat", "--label", "zone=a"]


@pytest.fixture
def versions(tmp_path, settings):
    settings.FLEET_HUB_ROOT, settings.FLEET_HUB_DISK_MARGIN = tmp_path / "hub", 0
    made = {}
    for repo, kind in (("acme/big", NodeKind.GPU_SERVER), ("acme/tiny", NodeKind.EDGE_DEVICE)):
        folder = write_folder(tmp_path / repo, {"config.json": b"{}", "model.safetensors": repo.encode() * 100})
        made[kind], _ = import_folder("test", folder, repo, "v1")
    return made


@pytest.fixture
def fleet_nodes(make_node):
    return {node.name: make_node(node.name, kind=node.kind, labels=node.labels, status=NodeStatus.ONLINE)[0]
            for node in NODES}


@pytest.mark.django_db
def test_deployments_are_created_once_and_converge_each_node_once(fleet_nodes, versions, tmp_path) -> None:
    out = Lines()
    created = demo.ensure_deployments(versions, out)
    assert [(d.name, d.repo, d.selector) for d in created] == [
        ("chat-default", "acme/big", {"role": "chat"}), ("edge-default", "acme/tiny", {"role": "edge"})]
    assert out.lines == []

    assert converge.tick() == 8
    commands = {c.node.name: c for c in NodeCommand.objects.select_related("node")}
    assert {name: (c.kind, c.activate, c.repo) for name, c in commands.items()} == {
        node.name: (CommandKind.DEPLOY, True, versions[node.kind].model.repo_id) for node in NODES}
    assert converge.tick() == 0  # still on their way: nothing is sent twice

    # The agents reported: active everywhere; then an operator rolled chat-default on and the demo restarts.
    for command in commands.values():
        NodeCommand.objects.filter(pk=command.pk).update(state=CommandState.ACTIVE, finished_at=timezone.now())
        NodeInstall.objects.create(node=command.node, repo=command.repo, sha=command.sha, state=InstallState.ACTIVE)
    assert converge.tick() == 0
    other, _ = import_folder("test", write_folder(tmp_path / "v2", {"config.json": b'{"v": 2}'}), "acme/big", "v2")
    Deployment.objects.filter(name="chat-default").update(desired_version=other)
    assert demo.ensure_deployments(versions, out) == [] and out.lines == []
    assert Deployment.objects.get(name="chat-default").desired_version == other
    assert converge.tick() == 3  # the GPU servers follow the deployment, not the demo's first choice
    assert set(NodeCommand.objects.filter(sha=other.sha).values_list("node__name", flat=True)) == {
        "gpu-01", "gpu-02", "gpu-03"}

    # They got there; then a rollout put v1 back on gpu-01 and gpu-02 while gpu-03 was away. When gpu-03
    # returns it converges to v1 again: a new command, not the id it converged to v1 with the first time.
    NodeCommand.objects.filter(sha=other.sha).update(state=CommandState.ACTIVE, finished_at=timezone.now())
    NodeInstall.objects.filter(node__labels__role="chat").update(sha=other.sha)
    chat = Deployment.objects.get(name="chat-default")
    Rollout.objects.create(deployment=chat, from_version=other, to_version=versions[NodeKind.GPU_SERVER],
                           state="succeeded", finished_at=timezone.now())
    NodeInstall.objects.filter(node__name__in=["gpu-01", "gpu-02"]).update(sha=versions[NodeKind.GPU_SERVER].sha)
    Deployment.objects.filter(pk=chat.pk).update(desired_version=versions[NodeKind.GPU_SERVER])
    assert converge.tick() == 1
    back = NodeCommand.objects.latest("id")
    assert (back.node.name, back.sha, back.activate) == ("gpu-03", versions[NodeKind.GPU_SERVER].sha, True)
    assert converge.tick() == 0


@pytest.mark.django_db
def test_a_refused_deployment_is_reported_and_the_other_is_made(fleet_nodes, versions) -> None:
    versions[NodeKind.GPU_SERVER].approval = ApprovalState.PENDING
    versions[NodeKind.GPU_SERVER].save()
    out = Lines()
    assert [d.name for d in demo.ensure_deployments(versions, out)] == ["edge-default"]
    assert len(out.lines) == 1 and "chat-default left out: version" in out.lines[0] and "not approved" in out.lines[0]

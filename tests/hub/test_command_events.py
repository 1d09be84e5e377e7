"""An agent's command events: a result resent after a reconnect is recorded once (a replayed "active" never
flips a node back to a version it has left), and download progress keeps the command's updated_at fresh
(the rollout driver tells live progress from a stale report by it)."""

from __future__ import annotations

import pytest

from fleet.accounts.models import AuditEvent
from fleet.agent.protocol import CommandEvent
from fleet.hub import commands
from fleet.hub.models import CommandKind, HubModel, InstallState, ModelVersion, NodeCommand, NodeInstall

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(db):
    model = HubModel.objects.create(repo_id="acme/tiny")
    return [ModelVersion.objects.create(model=model, revision=f"v{n}", sha=str(n) * 40) for n in (1, 2)]


def report(command: NodeCommand, state: str, **fields) -> NodeCommand | None:
    return commands.record_event(command.node_id, CommandEvent(type="event", command_id=command.command_id,
                                                               state=state, **fields))


def installs(node) -> dict[str, str]:
    return dict(NodeInstall.objects.filter(node=node).values_list("sha", "state"))


def test_a_replayed_result_is_recorded_once_and_never_moves_the_node_back(make_node, versions) -> None:
    node, _ = make_node()
    v1, v2 = versions
    first = commands.create("alice", node, CommandKind.DEPLOY, v1, activate=True)
    report(first, "active")
    second = commands.create("alice", node, CommandKind.DEPLOY, v2, activate=True)
    report(second, "active")
    assert installs(node) == {v1.sha: InstallState.STAGED, v2.sha: InstallState.ACTIVE}

    report(first, "active")  # the agent resends v1's result after a reconnect
    assert installs(node) == {v1.sha: InstallState.STAGED, v2.sha: InstallState.ACTIVE}
    assert AuditEvent.objects.filter(action="model.deploy.active", details__command=first.command_id).count() == 1


def test_progress_events_refresh_updated_at(make_node, versions, monkeypatch) -> None:
    monkeypatch.setattr(commands, "PROGRESS_WRITE_EVERY", 0)
    node, _ = make_node()
    command = commands.create("alice", node, CommandKind.DEPLOY, versions[0])
    report(command, "downloading", bytes_done=10, bytes_total=100)
    before = NodeCommand.objects.get(pk=command.pk).updated_at
    report(command, "downloading", bytes_done=50, bytes_total=100)
    row = NodeCommand.objects.get(pk=command.pk)
    assert row.bytes_done == 50 and row.updated_at > before


def test_the_resend_polls_find_only_the_asked_nodes_with_unfinished_commands(make_node):
    """nodes_with_pending / nodes_with_unfinished: a server process asks for its connected nodes; the answer
    is those among them with a command never sent (pending) or not finished, whatever other nodes have."""
    from django.utils import timezone

    from fleet.hub.commands import nodes_with_pending, nodes_with_unfinished
    from fleet.hub.models import CommandState, NodeCommand

    a, b, c, elsewhere = (make_node(name)[0] for name in ("a", "b", "c", "elsewhere"))

    def command(node, state, finished=False):
        NodeCommand.objects.create(command_id=f"{node.name}-{state}-{finished}", node=node, kind="deploy",
                                   repo="acme/tiny", state=state, finished_at=timezone.now() if finished else None)

    command(a, CommandState.PENDING)
    command(b, "downloading")
    command(c, "active", finished=True)
    command(elsewhere, CommandState.PENDING)
    asked = [a.pk, b.pk, c.pk]
    assert nodes_with_pending(asked) == {a.pk}
    assert nodes_with_unfinished(asked) == {a.pk, b.pk}
    assert nodes_with_pending([]) == set() and nodes_with_unfinished([c.pk]) == set()

"""Health checks through the hub: the rollout's prompt goes to each activated node as a NodeCommand, the
real agent relay (`fleet.agent.chat.ChatRelay`, its model stubbed) judges the answer over the wire
format, and the rollout commits or rolls the node back on what it says."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.agent import protocol
from fleet.agent.chat import ChatRelay
from fleet.hub import commands as hub_commands
from fleet.hub.models import CommandKind, CommandState, HubModel, InstallState, ModelVersion, NodeCommand, NodeInstall
from fleet.inventory.models import NodeStatus
from fleet.lib.errors import FieldError
from fleet.rollouts import driver, services
from fleet.rollouts.models import Rollout, RolloutEvent


class _Supervisor:
    listeners: list = []


class ScriptedAgent(ChatRelay):
    """The agent's own health-check code; only the model's reply is scripted."""

    def __init__(self, reply: str):
        super().__init__(_Supervisor())
        self.reply = reply
        self.sent: list[protocol.BaseModel] = []

        async def send(frame: protocol.BaseModel) -> None:
            self.sent.append(protocol.parse_agent_frame(protocol.dump(frame)))

        self.attach(send)

    async def ask(self, frame: protocol.HealthCheck) -> str:
        return self.reply


@pytest.fixture(autouse=True)
def _fresh_driver(monkeypatch):
    monkeypatch.setattr(driver, "_restarted", True)


@pytest.fixture
def deployment(db, make_node, alice):
    model = HubModel.objects.create(repo_id="acme/tiny")
    v1 = ModelVersion.objects.create(model=model, revision="v1", sha="a" * 40)
    ModelVersion.objects.create(model=model, revision="v2", sha="b" * 40)
    for name in ("gpu-01", "gpu-02"):
        node, _ = make_node(name, labels={"role": "chat"}, status=NodeStatus.ONLINE)
        NodeInstall.objects.create(node=node, repo="acme/tiny", sha=v1.sha, version=v1, state=InstallState.ACTIVE)
    return services.create_deployment(alice, "chat-default", "acme/tiny", "v1", selector={"role": "chat"})


def answer_everything(replies: dict[str, str]) -> list[protocol.HealthCheck]:
    """Carry out every unfinished command: deploys and activations succeed; health checks go through the
    wire format to the agent's relay, which answers with the node's scripted reply."""
    asked = []
    for command in NodeCommand.objects.filter(finished_at__isnull=True).select_related("node", "version"):
        if command.kind == CommandKind.HEALTHCHECK:
            frame = protocol.parse_server_frame(protocol.dump(hub_commands.frame_for(command)))
            asked.append(frame)
            agent = ScriptedAgent(replies[command.node.name])
            asyncio.run(agent.healthcheck(frame))
            [event] = agent.sent
        else:
            state = "staged" if command.kind == CommandKind.DEPLOY else "active"
            event = protocol.CommandEvent(type="event", command_id=command.command_id, state=state)
        hub_commands.record_event(command.node_id, event)
    return asked


def run(rollout: Rollout, replies: dict[str, str]) -> tuple[Rollout, list[protocol.HealthCheck]]:
    now, asked = timezone.now(), []
    for _ in range(40):
        rollout.refresh_from_db()
        if not rollout.active:
            return rollout, asked
        asked += answer_everything(replies)
        now += timedelta(seconds=3)
        driver.tick(now)
    raise AssertionError(f"rollout stuck in {rollout.state}")


STRATEGY = {"min_ready_seconds": 2, "max_unavailable": 1,
            "healthcheck": {"prompt": "What is the capital of France?", "expect": "Paris", "timeout_seconds": 20}}


def test_answers_containing_the_expected_text_commit_every_node(deployment, alice) -> None:
    rollout = services.create_rollout(alice, deployment, "v2", STRATEGY)
    rollout, asked = run(rollout, {"gpu-01": "It is Paris.", "gpu-02": "Paris, of course"})

    assert rollout.state == "succeeded", rollout.reason
    assert sorted(t.state for t in rollout.targets.all()) == ["committed", "committed"]
    assert {(f.repo, f.sha, f.prompt, f.expect, f.timeout) for f in asked} == {
        ("acme/tiny", "b" * 40, "What is the capital of France?", "Paris", 20.0)}
    checks = NodeCommand.objects.filter(kind=CommandKind.HEALTHCHECK)
    assert sorted(checks.values_list("state", "detail")) == [("succeeded", "It is Paris."),
                                                           ("succeeded", "Paris, of course")]
    deployment.refresh_from_db()
    assert deployment.desired_version.revision == "v2"


def test_an_answer_without_the_expected_text_fails_the_canary_and_puts_the_old_version_back(
        deployment, alice) -> None:
    rollout = services.create_rollout(alice, deployment, "v2", STRATEGY)
    rollout, _ = run(rollout, {"gpu-01": "Lyon.", "gpu-02": "Lyon."})

    assert rollout.state == "aborted"
    canary = rollout.targets.get(wave=0)
    assert canary.state == "failed" and "expected text 'Paris'" in canary.error
    assert canary.on == "old"
    other = rollout.targets.get(wave=1)
    assert other.on == "old" and other.state in ("aborted", "skipped", "reverted")
    [check] = NodeCommand.objects.filter(kind=CommandKind.HEALTHCHECK)
    assert (check.node_id, check.state, check.detail) == (canary.node_id, CommandState.FAILED, "Lyon.")
    # the canary went back: its last activation is of the old version
    last = NodeCommand.objects.filter(node_id=canary.node_id, kind=CommandKind.ACTIVATE).order_by("-id").first()
    assert last.sha == "a" * 40
    assert not NodeCommand.objects.filter(node_id=other.node_id, kind=CommandKind.ACTIVATE).exists()
    assert RolloutEvent.objects.filter(rollout=rollout, why__contains="health check failed").exists()


def test_people_cannot_queue_health_checks_by_hand(deployment) -> None:
    node = deployment.nodes.model.objects.get(name="gpu-01")
    with pytest.raises(FieldError) as error:
        hub_commands.create("someone", node, CommandKind.HEALTHCHECK, deployment.desired_version)
    assert error.value.field == "kind"

"""Deployments and rollouts on the database: validation naming the field, a rollout driven by the engine task
from the rows alone through real hub commands, compare-and-set writes, supersede, operator actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.accounts.models import AuditEvent
from fleet.agent.protocol import CommandEvent
from fleet.hub import commands as hub_commands
from fleet.hub.models import CommandKind, HubModel, InstallState, ModelVersion, NodeCommand, NodeInstall
from fleet.inventory.models import NodeStatus
from fleet.rollouts import driver, services, transitions
from fleet.rollouts.models import Rollout, RolloutEvent
from fleet.rollouts.services import RolloutError

SOAK_ONLY = {"healthcheck": None, "min_ready_seconds": 5}


@pytest.fixture
def fleet(db, make_node):
    model = HubModel.objects.create(repo_id="acme/tiny")
    v1 = ModelVersion.objects.create(model=model, revision="v1", sha="a" * 40)
    v2 = ModelVersion.objects.create(model=model, revision="v2", sha="b" * 40)
    nodes = []
    for index, zone in enumerate(["z1", "z2", "z1"], start=1):
        node, _ = make_node(f"gpu-{index:02d}", labels={"zone": zone, "role": "chat"}, status=NodeStatus.ONLINE)
        NodeInstall.objects.create(node=node, repo="acme/tiny", sha=v1.sha, version=v1, state=InstallState.ACTIVE)
        nodes.append(node)
    return model, v1, v2, nodes


@pytest.fixture
def deployment(fleet, alice):
    return services.create_deployment(alice, "chat-default", "acme/tiny", "v1", selector={"role": "chat"})


@pytest.fixture(autouse=True)
def _fresh_driver(monkeypatch):
    monkeypatch.setattr(driver, "_restarted", True)  # tests restart explicitly


def agents_answer(fail: dict[str, str] | None = None) -> int:
    """Every node carries out its unfinished commands through the hub's real event path."""
    fail = fail or {}
    answered = 0
    for command in NodeCommand.objects.filter(finished_at__isnull=True).select_related("node"):
        final = "staged" if command.kind == CommandKind.DEPLOY else "active"
        state = "failed" if fail.get(command.node.name) == command.kind else final
        event = CommandEvent(type="event", command_id=command.command_id, state=state,
                             error="boom" if state == "failed" else None)
        hub_commands.record_event(command.node_id, event)
        answered += 1
    return answered


def run_to_end(rollout: Rollout, fail: dict[str, str] | None = None, limit: int = 60) -> Rollout:
    now = timezone.now()
    for _ in range(limit):
        rollout.refresh_from_db()
        if not rollout.active:
            return rollout
        agents_answer(fail)
        now += timedelta(seconds=6)
        driver.tick(now)
    raise AssertionError(f"rollout stuck in {rollout.state}")


def test_deployment_validation_names_the_field(fleet, alice) -> None:
    cases = [
        (dict(name="Chat Default!", repo="acme/tiny", version="v1"), "name"),
        (dict(name="chat", repo="acme/none", version="v1"), "repo"),
        (dict(name="chat", repo="acme/tiny", version="v9"), "version"),
        (dict(name="chat", repo="acme/tiny", version="v1", nodes=["gpu-99"]), "nodes"),
        (dict(name="chat", repo="acme/tiny", version="v1"), "nodes"),
        (dict(name="chat", repo="acme/tiny", version="v1", selector={"zone": 5}), "selector"),
    ]
    for kwargs, field in cases:
        with pytest.raises(RolloutError) as error:
            services.create_deployment(alice, kwargs.pop("name"), kwargs.pop("repo"), kwargs.pop("version"), **kwargs)
        assert error.value.field == field, (kwargs, error.value.message)


def test_rollout_validation_names_the_field(deployment, bob) -> None:
    for version, strategy, field in [
        ("v2", {"batch": 0}, "strategy.batch"),
        ("v2", {"healthcheck": {"timeout_seconds": -1}}, "strategy.healthcheck.timeout_seconds"),
        ("v1", SOAK_ONLY, "version"),  # already the desired version
        ("nope", SOAK_ONLY, "version"),
    ]:
        with pytest.raises(RolloutError) as error:
            services.create_rollout(bob, deployment, version, strategy)
        assert error.value.field == field, error.value.message
    assert not Rollout.objects.exists()


def test_a_rollout_stages_everywhere_then_activates_wave_by_wave_to_success(deployment, bob, fleet) -> None:
    _, _, v2, nodes = fleet
    rollout = services.create_rollout(bob, deployment, "b" * 7, SOAK_ONLY)
    assert rollout.state == "progressing" and rollout.to_version == v2
    stage = NodeCommand.objects.filter(kind=CommandKind.DEPLOY)
    assert sorted(stage.values_list("command_id", flat=True)) == sorted(
        f"ro{rollout.pk}-n{node.pk}-a0-stage" for node in nodes)
    assert not NodeCommand.objects.filter(kind=CommandKind.ACTIVATE).exists()
    targets = list(rollout.targets.order_by("position").values_list("node__name", "wave"))
    assert targets == [("gpu-01", 0), ("gpu-03", 1), ("gpu-02", 2)]  # zone z1 first, then name
    rollout = run_to_end(rollout)
    assert rollout.state == "succeeded" and rollout.finished_at is not None
    assert set(rollout.targets.values_list("state", flat=True)) == {"committed"}
    activations = NodeCommand.objects.filter(kind=CommandKind.ACTIVATE)
    assert sorted(activations.values_list("node__name", flat=True)) == ["gpu-01", "gpu-02", "gpu-03"]
    deployment.refresh_from_db()
    assert deployment.desired_version == v2
    assert set(NodeInstall.objects.filter(state=InstallState.ACTIVE).values_list("sha", flat=True)) == {v2.sha}
    log = list(RolloutEvent.objects.filter(rollout=rollout, target__isnull=True).values_list("to_state", flat=True))
    assert log[0] == "pending" and log[-1] == "succeeded"
    assert AuditEvent.objects.filter(action="rollout.create", actor_name="bob").exists()
    assert AuditEvent.objects.filter(action="rollout.succeeded").exists()


def test_a_failing_canary_aborts_and_no_other_node_switches(deployment, bob) -> None:
    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    rollout = run_to_end(rollout, fail={"gpu-01": CommandKind.ACTIVATE})
    assert rollout.state == "aborted" and "1 of 1 canary targets failed (budget 0)" in rollout.reason
    assert "activation failed: boom" in rollout.reason
    assert list(NodeCommand.objects.filter(kind=CommandKind.ACTIVATE).values_list("node__name", flat=True)) == [
        "gpu-01"]
    deployment.refresh_from_db()
    assert deployment.desired_version.revision == "v1"


def test_every_write_is_a_compare_and_set(deployment, bob, monkeypatch) -> None:
    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    real_load, raced = transitions.load, []

    def racing_load(rollout_id):
        loaded = real_load(rollout_id)
        if not raced:  # another writer commits between our read and our write
            raced.append(Rollout.objects.filter(pk=rollout_id).update(revision=loaded[0].revision + 1))
        return loaded

    monkeypatch.setattr(transitions, "load", racing_load)
    before = RolloutEvent.objects.count()
    services.act(bob, rollout, "pause", reason="checking")
    assert raced == [1]
    rollout.refresh_from_db()
    assert rollout.state == "paused" and rollout.revision == 3  # create + start, the racer, the pause
    assert RolloutEvent.objects.count() == before + 1  # the losing attempt wrote nothing


def test_operator_actions_are_audited_and_refused_when_they_do_not_fit(deployment, bob) -> None:
    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    rollout = services.act(bob, rollout, "pause")
    assert rollout.state == "paused" and rollout.pause_reason == "paused by bob"
    assert services.act(bob, rollout, "resume").state == "progressing"
    assert services.act(bob, rollout, "abort").state == "aborted"
    with pytest.raises(RolloutError) as error:
        services.act(bob, rollout, "resume")
    assert error.value.status == 409 and "cannot be resumed" in error.value.message
    assert [a.action for a in AuditEvent.objects.filter(actor_name="bob").order_by("id")][-3:] == [
        "rollout.pause", "rollout.resume", "rollout.abort"]


def test_a_newer_rollout_supersedes_the_running_one(deployment, bob, fleet) -> None:
    first = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    v3 = ModelVersion.objects.create(model=fleet[0], revision="v3", sha="c" * 40)
    second = services.create_rollout(bob, deployment, v3, SOAK_ONLY)
    first.refresh_from_db()
    assert first.state == "superseded" and first.reason == f"superseded by rollout {second.pk}"
    assert second.state == "progressing"


def test_a_finished_rollout_rolls_back_by_a_fast_track_rollout(deployment, bob) -> None:
    rollout = run_to_end(services.create_rollout(bob, deployment, "v2", SOAK_ONLY))
    back = services.act(bob, rollout, "rollback")
    assert back.pk != rollout.pk and back.to_version.revision == "v1" and back.strategy["canary"] == 0
    back = run_to_end(back)
    assert back.state == "succeeded"
    assert set(NodeInstall.objects.filter(state=InstallState.ACTIVE).values_list("version__revision", flat=True)) \
        == {"v1"}


def test_an_engine_restart_resends_nothing_twice_and_finishes(deployment, bob, monkeypatch) -> None:
    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    agents_answer()
    driver.tick()
    count = NodeCommand.objects.count()
    monkeypatch.setattr(driver, "_restarted", False)  # a new engine process: its first pass is a restart
    driver.tick()
    assert NodeCommand.objects.count() == count
    assert run_to_end(rollout).state == "succeeded"
    assert NodeCommand.objects.filter(kind=CommandKind.ACTIVATE).count() == 3


def test_an_offline_node_is_deferred_and_the_rollout_still_succeeds(deployment, bob, fleet) -> None:
    nodes = fleet[3]
    nodes[1].status = NodeStatus.OFFLINE  # gpu-02: never answers during the rollout
    nodes[1].save()
    rollout = services.create_rollout(bob, deployment, "v2", {**SOAK_ONLY, "offline_grace_seconds": 10})
    now = timezone.now()
    for _ in range(40):
        rollout.refresh_from_db()
        if not rollout.active:
            break
        for command in NodeCommand.objects.filter(finished_at__isnull=True).exclude(node=nodes[1]):
            final = "staged" if command.kind == CommandKind.DEPLOY else "active"
            hub_commands.record_event(command.node_id, CommandEvent(type="event", command_id=command.command_id,
                                                                    state=final))
        now += timedelta(seconds=6)
        driver.tick(now)
    states = dict(rollout.targets.values_list("node__name", "state"))
    assert rollout.state == "succeeded" and states == {"gpu-01": "committed", "gpu-02": "deferred",
                                                      "gpu-03": "committed"}

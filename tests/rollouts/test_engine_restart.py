"""Restart safety with real processes: `manage.py engine` drives a rollout from the database; SIGKILL it
mid-rollout, start another, and the rollout finishes with every node activated exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from fleet.agent.protocol import CommandEvent
from fleet.hub import commands as hub_commands
from fleet.hub.models import CommandKind, HubModel, InstallState, ModelVersion, NodeCommand, NodeInstall
from fleet.inventory.models import NodeStatus
from fleet.rollouts import services
from fleet.rollouts.models import Rollout

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """This test's database, for the engine process (SQLite here; PostgreSQL with DATABASE_URL=postgres://…)."""
    config = connection.settings_dict
    if connection.vendor == "postgresql":
        password = f":{config['PASSWORD']}" if config["PASSWORD"] else ""
        return f"postgres://{config['USER']}{password}@{config['HOST']}:{config['PORT'] or 5432}/{config['NAME']}"
    return f"sqlite:///{config['NAME']}"


def start_engine(tmp_path: Path, log_name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "FLEET_"))}
    env.update({"DATABASE_URL": database_url(), "FLEET_VAR_DIR": str(tmp_path),
                "FLEET_SECRET_KEY": "engine-restart-test-secret-key-0123456789", "PYTHONUNBUFFERED": "1"})
    log = open(tmp_path / log_name, "w")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([sys.executable, "manage.py", "engine"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def answer(commands: list[NodeCommand]) -> None:
    for command in commands:
        state = "staged" if command.kind == CommandKind.DEPLOY else "active"
        hub_commands.record_event(command.node_id, CommandEvent(type="event", command_id=command.command_id,
                                                                state=state))


def test_a_killed_engine_is_replaced_and_the_rollout_finishes_activating_each_node_once(
        tmp_path, make_node, alice) -> None:
    model = HubModel.objects.create(repo_id="acme/tiny")
    v1 = ModelVersion.objects.create(model=model, revision="v1", sha="a" * 40)
    ModelVersion.objects.create(model=model, revision="v2", sha="b" * 40)
    names = [f"gpu-{i:02d}" for i in range(1, 5)]
    for name in names:
        node, _ = make_node(name, labels={"role": "chat"}, status=NodeStatus.ONLINE)
        NodeInstall.objects.create(node=node, repo="acme/tiny", sha=v1.sha, version=v1, state=InstallState.ACTIVE)
    deployment = services.create_deployment(alice, "chat-default", "acme/tiny", "v1", selector={"role": "chat"})
    rollout = services.create_rollout(alice, deployment, "v2", {"healthcheck": None, "min_ready_seconds": 1,
                                                                "batch": 1})
    engine = start_engine(tmp_path, "engine-1.log")
    killed = False
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rollout.refresh_from_db()
            if not rollout.active:
                break
            answer(list(NodeCommand.objects.filter(finished_at__isnull=True)))
            committed = rollout.targets.filter(state="committed").count()
            if committed >= 1 and not killed:  # mid-rollout: the canary is done, the next waves are not
                engine.send_signal(signal.SIGKILL)
                engine.wait(timeout=10)
                killed = True
                engine = start_engine(tmp_path, "engine-2.log")
            time.sleep(0.3)
        logs = "".join(path.read_text() for path in sorted(tmp_path.glob("engine-*.log")))
        assert killed and rollout.state == "succeeded", logs
    finally:
        engine.kill()
        engine.wait(timeout=10)
    rollout = Rollout.objects.get(pk=rollout.pk)
    assert set(rollout.targets.values_list("state", flat=True)) == {"committed"}
    activations = sorted(NodeCommand.objects.filter(kind=CommandKind.ACTIVATE).values_list("node__name", flat=True))
    assert activations == names  # exactly once each, across the two engines
    assert "engine leading" in (tmp_path / "engine-2.log").read_text()

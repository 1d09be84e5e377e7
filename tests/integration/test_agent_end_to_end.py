"""The real fleet-agent against real Daphne: enroll, come online, go offline when killed, come back.

Runs twice: the embedded default (SQLite, in-memory layer, one Daphne) and the production path
(PostgreSQL + Redis channel layer, two Daphne processes; the agent talks to one, the browser to the other).
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.harness import Agent, LiveSocket, Stack, login_cookie, wait_until

pytestmark = pytest.mark.integration
OFFLINE_AFTER = 3


@pytest.fixture
def embedded_stack(tmp_path):
    stack = Stack(tmp_path, offline_after=OFFLINE_AFTER).start()
    yield stack
    stack.stop()


@pytest.fixture
def production_stack(tmp_path, services):
    import psycopg

    name = f"fleet_it_{uuid.uuid4().hex[:10]}"
    admin_url = services["postgres"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    stack = Stack(tmp_path, database_url=database_url, redis_url=services["redis"], servers=2,
                  offline_after=OFFLINE_AFTER)
    stack.env["FLEET_CHANNEL_PREFIX"] = name  # isolates this run's groups in the shared Redis
    try:
        yield stack.start()
    finally:
        stack.stop()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _scenario(stack: Stack, tmp_path, agent_server: int, browser_server: int) -> None:
    stack.manage("createoperator", "charlie", "--role", "viewer", "--password", "correct-horse-battery")
    token = stack.manage("createenrollmenttoken", "--expires", "10m")
    cookie = login_cookie(stack.url(browser_server), "charlie", "correct-horse-battery")
    agent = Agent(tmp_path / "agent", stack.env)
    enrolled = agent.cli("enroll", "--server", stack.url(agent_server), "--token", token, "--name", "it-node")
    assert enrolled.returncode == 0, enrolled.stderr
    assert stack.node_status("it-node") == "never_seen"

    async with LiveSocket(stack.url(browser_server), cookie) as live:
        agent.run("--simulate", "h100x8")
        try:
            message = await live.wait_for_node("it-node", "online", timeout=60)
        except AssertionError:
            raise AssertionError(f"agent log:\n{agent.log()}\nserver logs:\n{stack.logs()}") from None
        assert message["node"]["gpu_count"] == 8
        summary = await live.wait_for(lambda m: m.get("kind") == "summary", timeout=30)
        assert summary["summary"]["nodes"]["online"] == 1
        assert stack.node_status("it-node") == "online"
        gpus = stack.query("SELECT count(*) FROM inventory_gpu g JOIN inventory_node n ON n.id = g.node_id "
                           "WHERE n.name = ? AND g.state = 'present'", ("it-node",))
        assert gpus == [(8,)]

        killed_at = time.monotonic()
        agent.kill()
        await live.wait_for_node("it-node", "offline", timeout=OFFLINE_AFTER + 30)
        # Not on disconnect: only once the timeout has run from the last recorded frame (last_seen is
        # written in batches, at most about a heartbeat (1 s here) behind the agent's last frame).
        assert time.monotonic() - killed_at >= OFFLINE_AFTER - 1.5
        assert stack.node_status("it-node") == "offline"

        agent.run("--simulate", "h100x8")
        await live.wait_for_node("it-node", "online", timeout=60)

        # Rotating the secret while the agent runs: the server drops the old secret's connection and
        # the running agent carries on with the new one.
        rotated = agent.cli("rotate")
        assert rotated.returncode == 0, rotated.stderr
        wait_until(lambda: "reconnecting with the new secret" in agent.log(), 45, "the agent to reconnect")
        wait_until(lambda: agent.log().count("connected to") >= 2, 45, "the new connection")
        assert agent.process.poll() is None
        assert stack.node_status("it-node") == "online"
        agent.kill()
    status = agent.cli("status")
    assert "it-node" in status.stdout


async def test_agent_lifecycle_embedded(embedded_stack, tmp_path):
    await _scenario(embedded_stack, tmp_path, agent_server=0, browser_server=0)


@pytest.mark.services
async def test_agent_lifecycle_production_path(production_stack, tmp_path):
    await _scenario(production_stack, tmp_path, agent_server=0, browser_server=1)
    wait_until(lambda: production_stack.node_status("it-node") == "offline", OFFLINE_AFTER + 10, "offline")

"""Real Daphne + a real simulated agent: the production path (PostgreSQL + Redis, two Daphne
processes) streams a node's telemetry from the process holding the agent to a browser socket on the
other, and /metrics on that other process answers for it; the catch-up after a reconnect."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Agent, LiveSocket, Stack, login_cookie, wait_until
from tests.integration.test_agent_end_to_end import production_stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-battery"


def enroll_and_run(stack: Stack, tmp_path, server: int, name: str, *run_args: str) -> tuple[Agent, int]:
    token = stack.manage("createenrollmenttoken", "--expires", "10m")
    agent = Agent(tmp_path / name, stack.env)
    enrolled = agent.cli("enroll", "--server", stack.url(server), "--token", token, "--name", name)
    assert enrolled.returncode == 0, enrolled.stderr
    node_id = stack.query("SELECT id FROM inventory_node WHERE name = ?", (name,))[0][0]
    agent.run("--simulate", "h100x8", *run_args)
    return agent, node_id


async def next_telemetry(live: LiveSocket, node_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(await asyncio.wait_for(live.ws.recv(), left))
        except TimeoutError:
            break
        if message.get("kind") == "telemetry" and str(node_id) in message.get("nodes", {}):
            return message["nodes"][str(node_id)]
    raise AssertionError(f"no telemetry for node {node_id} within {timeout}s")


def scrape(base: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", headers=headers), timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


@pytest.mark.services
async def test_production_path_streams_telemetry_across_processes(production_stack, tmp_path):  # noqa: F811
    stack = production_stack
    stack.manage("createoperator", "charlie", "--role", "viewer", "--password", PASSWORD)
    cookie = login_cookie(stack.url(1), "charlie", PASSWORD)
    key = stack.manage("createapikey", "--user", "charlie", "--scope", "metrics")
    agent, node_id = enroll_and_run(stack, tmp_path, 0, "prod-node", "--fault", "xid:79,gpu=2@3s")
    try:
        async with LiveSocket(stack.url(1), cookie) as live:  # the browser is on the other process
            await live.ws.send(json.dumps({"type": "subscribe", "topics": [f"telemetry:node:{node_id}"]}))
            try:
                first = await next_telemetry(live, node_id, timeout=60)
            except AssertionError:
                raise AssertionError(f"agent log:\n{agent.log()}\nserver logs:\n{stack.logs()}") from None
            assert len(first["latest"]["gpus"]) == 8
            second = await next_telemetry(live, node_id, timeout=30)
            assert second["latest"]["seq"] > first["latest"]["seq"]  # a live stream, not one snapshot
            assert second["points"] and second["points"][-1][0] > first["points"][-1][0]

        # /metrics on the process without the agent answers from the shared copy.
        families = wait_until(lambda: (f := scrape(stack.url(1), key)) and f["DCGM_FI_DEV_GPU_UTIL"].samples and f,
                              90, "GPU series on the other process")
        gpus = {s.labels["gpu"] for s in families["DCGM_FI_DEV_GPU_UTIL"].samples}
        assert gpus == {str(i) for i in range(8)}
        # A simulated agent names its own host (every demo node on one machine would otherwise be that
        # machine); the node label carries Fleet's node name.
        assert {s.labels["Hostname"] for s in families["DCGM_FI_DEV_GPU_UTIL"].samples} == {"prod-node.sim.fleet.local"}
        assert {s.labels["node"] for s in families["DCGM_FI_DEV_GPU_UTIL"].samples} == {"prod-node"}
        connections = families["fleet_agent_connections"].samples[0].value
        assert connections == 1
        # The simulated XID becomes an alert row (written by the process holding the agent).
        wait_until(lambda: stack.query("SELECT count(*) FROM telemetry_alert WHERE kind = 'xid' AND code = 79")
                   == [(1,)], 30, "the XID alert")
    finally:
        agent.kill()


@pytest.fixture
def embedded_stack(tmp_path):
    stack = Stack(tmp_path, offline_after=30)
    stack.env["FLEET_METRICS_ALLOW"] = "127.0.0.1"
    yield stack.start()
    stack.stop()


async def test_agent_catches_up_after_the_server_was_away(embedded_stack, tmp_path):
    """Kill and restart the only server: the agent buffers while it is away and sends a catch-up."""
    stack = embedded_stack
    agent, node_id = enroll_and_run(stack, tmp_path, 0, "buffer-node")
    try:
        wait_until(lambda: "welcomed" in agent.log(), 60, "the agent to connect")
        stack.stop()
        time.sleep(4)  # the agent samples into its buffer meanwhile
        stack.processes = []
        stack.start()
        wait_until(lambda: agent.log().count("welcomed") >= 2, 90, "the agent to reconnect")
        def caught_up():
            families = scrape(stack.url())
            return families if families["fleet_telemetry_catchup_points"].samples[0].value else None

        families = wait_until(caught_up, 90, "catch-up points")
        assert families["fleet_telemetry_catchup_points"].samples[0].value >= 2
    finally:
        agent.kill()

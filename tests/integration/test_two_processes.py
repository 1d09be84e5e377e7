"""Two Daphne processes sharing PostgreSQL and the Redis channel layer (the production path): an agent
on process A, a dashboard on process B. B's socket follows the node's presence (online, then offline
once the agent is gone, announced once although both processes sweep) and every one of its telemetry
points, paced to at most about one message a second; Redis holds one window point per frame sent.

The agent is a websockets client speaking the agent protocol with a real node secret, so the test knows
exactly which frames were sent and when (each carries its index as GPU 0's utilisation)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request

import pytest
import websockets

from fleet.telemetry.browser import BUCKET, RATE
from tests.integration.harness import LiveSocket, Stack, login_cookie, wait_until
from tests.integration.test_agent_end_to_end import OFFLINE_AFTER, production_stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-battery"
FRAMES = 12


def enroll(stack: Stack, server: int, name: str) -> tuple[int, str]:
    """(node id, node secret) through the enrollment API, as `fleet-agent enroll` does."""
    token = stack.manage("createenrollmenttoken", "--expires", "10m")
    body = json.dumps({"token": token, "hostname": f"{name}.lan", "name": name}).encode()
    request = urllib.request.Request(f"{stack.url(server)}/api/agents/enroll", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        enrolled = json.loads(response.read())
    return enrolled["node_id"], enrolled["secret"]


Sent = list[tuple[float, float]]


async def run_agent(base: str, secret: str, frames: int) -> tuple[websockets.ClientConnection, asyncio.Task, Sent]:
    """Connect, hello, then ``frames`` metrics frames at the interval the server asks for: the open
    connection, its ping answerer, and (send time, GPU 0 utilisation) per frame."""
    from fleet.agent.collectors.simulated import SimulatedCollector
    from fleet.agent.protocol import Hello, HostFacts, Metrics, Pong, dump

    sim = SimulatedCollector("a100x4", "two-proc")
    inventory, _ = sim.inventory()
    ws = await websockets.connect(base.replace("http://", "ws://") + "/ws/agent/", open_timeout=30,
                                  additional_headers={"Authorization": f"Bearer {secret}"}, ping_interval=None)
    await ws.send(dump(Hello(type="hello", agent_version="test", host=HostFacts(hostname="two-proc"), gpus=inventory)))
    while True:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if welcome.get("type") == "welcome":
            break
    interval = welcome["metrics_interval"]

    async def answer_pings() -> None:  # the server's heartbeat: unanswered, it would drop us early
        with contextlib.suppress(Exception):
            async for message in ws:
                frame = json.loads(message)
                if frame.get("type") == "ping":
                    await ws.send(dump(Pong(type="pong", nonce=frame.get("nonce", ""))))

    pings = asyncio.create_task(answer_pings())
    sent = []
    for index in range(frames):
        gpus = sim.sample(time.time())
        gpus[0] = gpus[0].model_copy(update={"utilization_gpu": float(index)})
        now = time.time()
        await ws.send(dump(Metrics(type="metrics", ts=now, gpus=gpus)))
        sent.append((now, float(index)))
        await asyncio.sleep(interval)
    return ws, pings, sent


class Inbox:
    """Every message a browser socket receives, read in the background."""

    def __init__(self, ws) -> None:
        self.messages: list[tuple[float, dict]] = []
        self.task = asyncio.create_task(self._read(ws))

    async def _read(self, ws) -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                self.messages.append((time.monotonic(), json.loads(raw)))

    async def wait(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for _, message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout}s; got {[m for _, m in self.messages][-5:]}")


def presence(name: str, status: str):
    return lambda m: m.get("kind") == "node" and m["node"].get("name") == name and m["node"].get("status") == status


@pytest.mark.services
async def test_a_browser_on_one_process_follows_an_agent_on_the_other(production_stack):  # noqa: F811
    import redis

    stack = production_stack
    stack.manage("createoperator", "charlie", "--role", "viewer", "--password", PASSWORD)
    node_id, secret = enroll(stack, 0, "two-proc")
    cookie = login_cookie(stack.url(1), "charlie", PASSWORD)
    topic = f"telemetry:node:{node_id}"
    async with LiveSocket(stack.url(1), cookie) as live:  # subscribes to "fleet" (presence, summaries)
        inbox = Inbox(live.ws)
        await live.ws.send(json.dumps({"type": "subscribe", "topics": [topic]}))
        await inbox.wait(lambda m: m.get("kind") == "subscribed" and topic in m["topics"], 10, "subscription")
        subscribed_at = time.monotonic()
        try:
            ws, pings, sent = await run_agent(stack.url(0), secret, FRAMES)
        except Exception as exc:
            raise AssertionError(f"agent failed: {exc!r}\nserver logs:\n{stack.logs()}") from exc
        await inbox.wait(presence("two-proc", "online"), 30, "the node online on the other process")

        # Every point of every frame reaches the browser on B, once and in order, paced.
        def last_point(m: dict) -> bool:
            entry = m.get("nodes", {}).get(str(node_id))
            return bool(entry and entry["points"] and entry["points"][-1][1][0][1] == FRAMES - 1)

        await inbox.wait(last_point, 30, "the last frame's point on the other process")
        updates = [(at, m["nodes"][str(node_id)]) for at, m in inbox.messages
                   if m.get("kind") == "telemetry" and str(node_id) in m.get("nodes", {})]
        delivered = [p[1][0][1] for _, entry in updates for p in entry["points"]]
        assert delivered == [util for _, util in sent]
        assert updates[-1][1]["latest"]["gpus"][0]["utilization_gpu"] == FRAMES - 1
        elapsed = updates[-1][0] - subscribed_at
        assert len(updates) <= BUCKET + elapsed * RATE, (len(updates), elapsed)

        # The shared Redis window: one point per frame, at the time process A took it in.
        prefix = stack.env["FLEET_CHANNEL_PREFIX"]
        client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
        window = [json.loads(p) for p in client.lrange(f"{prefix}:tel:win:{node_id}", 0, -1)]
        assert [p[1][0][1] for p in window] == [util for _, util in sent]
        stamps = [p[0] for p in window]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        for (sent_at, _), stamp in zip(sent, stamps, strict=True):
            assert sent_at - 0.01 <= stamp <= sent_at + 5, (sent_at, stamp)

        # The agent dies (no close handshake): offline after the timeout, announced once on B.
        pings.cancel()
        killed_at = time.monotonic()
        ws.transport.abort()
        await inbox.wait(presence("two-proc", "offline"), OFFLINE_AFTER + 30, "the node offline")
        assert time.monotonic() - killed_at >= OFFLINE_AFTER - 1.5
        await asyncio.sleep(2.5)  # a few more sweeps of both processes
        offline = [m for _, m in inbox.messages if presence("two-proc", "offline")(m)]
        assert len(offline) == 1, offline
        inbox.task.cancel()
    wait_until(lambda: stack.node_status("two-proc") == "offline", 10, "offline in the database")
    with contextlib.suppress(Exception):
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)

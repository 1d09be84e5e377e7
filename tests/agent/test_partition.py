"""An agent cut off from the server for (a simulated) ten minutes: its runtime keeps serving, its telemetry
buffer stays within its bound (oldest dropped, counted), and after the partition it delivers what it kept in
catch-up frames under the cap the server announced, with the drop count, before live metrics resume."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2

from fleet.agent.collectors.simulated import SimulatedCollector
from fleet.agent.connection import backoff_delays, run_agent
from fleet.agent.modelstore import ModelStore
from fleet.agent.protocol import Welcome, dump, parse_agent_frame
from fleet.agent.state import Credentials
from tests.agent.test_connection import SECRET, FakeServer
from tests.agent.test_runtime_supervisor import alive, runs, until

REPO, SHA = "acme/tiny", "1" * 40
PARTITION = 600.0  # simulated seconds without the server
KEPT = 50  # FLEET_AGENT_BUFFER_POINTS
CAP = 2048  # the server's max_metrics_frame_bytes: several catch-up frames


STEP = 3.0  # simulated seconds per sample


class Clock:
    """The agent's sampling clock: STEP simulated seconds per sample, so ten minutes pass in seconds."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        self.now += STEP
        return self.now


async def test_partitioned_agent_keeps_serving_and_catches_up_within_the_frame_cap(tmp_path, monkeypatch,
                                                                                  fake_runtimes):
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_INITIAL_DELAY", "0.05")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_MIN_DELAY", "0.05")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_MAX_DELAY", "0.2")
    monkeypatch.setenv("FLEET_AGENT_BUFFER_POINTS", str(KEPT))
    monkeypatch.setenv("FLEET_RUNTIME_READY_TIMEOUT", "20")
    clock = Clock(time.time() - PARTITION - 5)
    monkeypatch.setattr("fleet.agent.metrics_sender.time", clock)
    home = tmp_path / "home"
    store = ModelStore(home)
    store.snapshot(REPO, SHA).mkdir(parents=True)
    (store.snapshot(REPO, SHA) / "config.json").write_text("{}")
    store.mark_staged(REPO, SHA, 2)
    store.activate(REPO, SHA)

    partition = asyncio.Event()
    healed = asyncio.Event()
    frames: list[dict] = []
    sizes: list[int] = []
    done = asyncio.Event()

    async def handler(ws, n):
        await ws.recv()  # hello
        if n == 1:
            await ws.send(dump(Welcome(type="welcome", node_id=7, node_name="node-7", heartbeat_interval=10,
                                       metrics_interval=0.01, offline_after=30, max_metrics_frame_bytes=CAP)))
            await ws.recv()  # one live sample, then the link goes
            server.reject = 503
            partition.set()
            await ws.close(1001)
            return
        await ws.send(dump(Welcome(type="welcome", node_id=7, node_name="node-7", heartbeat_interval=10,
                                   metrics_interval=0.01, offline_after=30, max_metrics_frame_bytes=CAP)))
        while True:
            data = await ws.recv()
            sizes.append(len(data))
            frame = parse_agent_frame(data, max_bytes=CAP)  # over the cap would raise here
            frames.append(json.loads(data))
            if frame.type == "metrics.batch":
                await ws.send(json.dumps({"type": "ack", "v": 1, "seq": frame.seq}))
            elif frame.type == "metrics":
                done.set()
                await ws.wait_closed()
                return

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        creds = Credentials(server=server.url, node_id=7, node_name="node-7", secret=SECRET)
        task = asyncio.create_task(run_agent(creds, SimulatedCollector("cpu-only", seed="node-7"), home=home,
                                             stop_event=stop, runtime="vllm", reconnect_delays=backoff_delays))
        try:
            await until(lambda: runs(fake_runtimes), what="the runtime to start")
            runtime = runs(fake_runtimes)[0]
            await asyncio.wait_for(partition.wait(), 30)
            # the partition: ten simulated minutes of samples while every dial is refused
            await until(lambda: clock.now > time.time(), timeout=60, what="ten simulated minutes")
            assert alive(runtime["pid"]) and len(runs(fake_runtimes)) == 1  # not stopped, not restarted
            async with httpx2.AsyncClient() as client:
                port = runtime["argv"][runtime["argv"].index("--port") + 1]
                answer = await client.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
            assert answer.status_code == 200  # still serving while the server is unreachable
            server.reject = None
            healed.set()
            await asyncio.wait_for(done.wait(), 60)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    batches = [f for f in frames if f["type"] == "metrics.batch"]
    assert frames[-1]["type"] == "metrics" and frames[: len(batches)] == batches  # catch-up first
    assert len(batches) > 1 and max(sizes) <= CAP
    points = [p["ts"] for b in batches for p in b["points"]]
    assert points == sorted(points) and KEPT - 2 <= len(points) <= KEPT + 2  # the newest, within the bound
    dropped = sum(b.get("dropped", 0) for b in batches)
    assert dropped >= PARTITION / STEP - 2 * KEPT  # ~150 samples lost to the bound, counted and reported once
    assert batches[0].get("dropped") == dropped  # the first frame carries the count; acked, it is not repeated


def test_every_reconnect_delay_is_jittered(monkeypatch):
    """websockets randomises only its first delay: agents that lost the server together would retry in
    lockstep after it. Each later delay is drawn from [d/2, d] of the library's series."""
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_MIN_DELAY", "2")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_MAX_DELAY", "60")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_FACTOR", "2")
    series = [[next(delays) for _ in range(10)] for delays in (backoff_delays() for _ in range(20))]
    plain = [2, 4, 8, 16, 32, 60, 60, 60, 60]
    for delays in series:
        assert all(d / 2 <= got <= d for got, d in zip(delays[1:], plain, strict=True))
    assert len({delays[5] for delays in series}) == len(series)  # not in lockstep
    monkeypatch.setenv("FLEET_AGENT_BACKOFF_JITTER", "0")
    assert [round(d, 6) for d in _take(backoff_delays(), 10)[1:]] == plain  # the library's own series


def _take(delays, count: int) -> list[float]:
    return [next(delays) for _ in range(count)]

"""run_agent against an in-process websockets server playing the Fleet server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from fleet.agent.collectors.simulated import SimulatedCollector
from fleet.agent.connection import EXIT_OK, EXIT_REFUSED, EXIT_REPLACED, run_agent, ws_url
from fleet.agent.protocol import (
    Chat,
    ChatMessage,
    Error,
    HealthCheck,
    Hello,
    Metrics,
    Ping,
    Welcome,
    dump,
    parse_agent_frame,
)
from fleet.agent.state import Credentials, read_status, save_credentials

SECRET = "node-secret-abc"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_INITIAL_DELAY", "0.01")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_MIN_DELAY", "0.1")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_MAX_DELAY", "0.4")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_FACTOR", "2")


class FakeServer:
    """Records each handshake's Authorization header; ``handler`` plays one connection."""

    def __init__(self, handler: Callable[[ServerConnection, int], Awaitable[None]],
                 reject: int | None = None):
        self.handler = handler
        self.reject = reject
        self.auth: list[str | None] = []
        self.connections = 0

    def process_request(self, connection, request):
        self.auth.append(request.headers.get("Authorization"))
        if self.reject:
            return connection.respond(self.reject, "no\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request.path == "/ws/agent/"
        self.connections += 1
        await self.handler(ws, self.connections)

    async def __aenter__(self) -> FakeServer:
        self.server = await serve(self._handle, "127.0.0.1", 0, process_request=self.process_request)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


def welcome(interval: float = 0.05) -> str:
    return dump(Welcome(type="welcome", node_id=7, node_name="node-7", heartbeat_interval=10,
                        metrics_interval=interval, offline_after=30))


def start(url: str, home, stop: asyncio.Event, profile: str = "h100x8") -> asyncio.Task:
    creds = Credentials(server=url, node_id=7, node_name="node-7", secret=SECRET)
    collector = SimulatedCollector(profile, seed="node-7")
    return asyncio.create_task(run_agent(creds, collector, labels={"rack": "r1"}, kind=None, home=home,
                                         stop_event=stop))


async def test_session_hello_welcome_ping_pong_metrics_and_clean_stop(tmp_path):
    home = tmp_path / "home"
    seen: dict = {}
    ready = asyncio.Event()

    async def handler(ws, n):
        seen["hello"] = parse_agent_frame(await ws.recv())
        await ws.send(welcome())
        await ws.send(dump(Ping(type="ping", nonce="nonce-123")))
        # this agent runs no runtime (--runtime none): health checks and chats fail with the reason
        await ws.send(dump(HealthCheck(type="healthcheck", command_id="cmd-1", repo="acme/tiny", sha=SHA,
                                       prompt="hi")))
        await ws.send(dump(Chat(type="chat", request_id="req-1",
                                messages=[ChatMessage(role="user", content="hi")])))
        await ws.send('{"type": "nonsense", "v": 1}')  # ignored, connection stays up
        await ws.send(dump(Error(type="error", code="invalid_frame", detail="gpus.0.uuid: bad")))
        metrics = []
        while len(metrics) < 2 or not {"pong", "event", "chat.error"} <= seen.keys():
            frame = parse_agent_frame(await ws.recv())  # every agent frame must pass the server parser
            if isinstance(frame, Metrics):
                metrics.append(frame)
            else:
                seen[frame.type] = frame
        seen["metrics"] = metrics
        ready.set()
        async for _ in ws:  # keep receiving until the agent closes
            pass
        seen["close_code"] = ws.close_code

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        task = start(server.url, home, stop)
        await asyncio.wait_for(ready.wait(), 5)
        status = read_status(home)
        assert status["connected"] is True and status["node_id"] == 7
        assert status["last_error"] == "server: invalid_frame: gpus.0.uuid: bad"
        stop.set()
        assert await asyncio.wait_for(task, 5) == EXIT_OK
        await asyncio.sleep(0.05)

    assert server.auth == [f"Bearer {SECRET}"]
    hello: Hello = seen["hello"]
    assert hello.agent_version and hello.host.hostname == "node-7.sim.fleet.local"  # simulated: its own name
    assert hello.host.kind == "gpu_server" and hello.host.labels == {"rack": "r1"}
    assert len(hello.gpus) == 8 and hello.gpu_note is None
    assert seen["pong"].nonce == "nonce-123"
    assert seen["event"].command_id == "cmd-1" and seen["event"].state == "failed"
    assert "--runtime none" in seen["event"].error
    assert seen["chat.error"].request_id == "req-1" and "--runtime none" in seen["chat.error"].error
    assert hello.serving == [] and "builtin" in hello.runtimes  # torch and transformers are installed here
    sample = seen["metrics"][0]
    assert len(sample.gpus) == 8 and sample.host is not None and sample.host.memory_total_bytes > 0
    assert seen["close_code"] == 1000
    assert read_status(home)["connected"] is False


async def test_jetson_profile_overrides_host_facts(tmp_path):
    hellos = []

    async def handler(ws, n):
        hellos.append(parse_agent_frame(await ws.recv()))
        await ws.close(4409)

    async with FakeServer(handler) as server:
        assert await asyncio.wait_for(start(server.url, tmp_path, asyncio.Event(), "jetson-orin"), 5) == 4
    host = hellos[0].host
    assert (host.arch, host.kind) == ("aarch64", "edge_device")


async def test_reconnects_after_the_server_drops_the_connection(tmp_path):
    second = asyncio.Event()

    async def handler(ws, n):
        await ws.recv()
        if n == 1:
            ws.transport.abort()  # no close frame: a network failure
            return
        await ws.send(welcome(interval=10))
        second.set()
        await ws.wait_closed()

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        task = start(server.url, tmp_path, stop)
        await asyncio.wait_for(second.wait(), 5)
        stop.set()
        assert await asyncio.wait_for(task, 5) == EXIT_OK
    assert server.connections == 2
    assert server.auth == [f"Bearer {SECRET}"] * 2


async def test_server_that_accepts_then_closes_is_not_hammered(tmp_path):
    async def handler(ws, n):
        await ws.close(1011)

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        started = time.monotonic()
        task = start(server.url, tmp_path, stop)
        await asyncio.sleep(1.0)
        dialled, elapsed = server.connections, time.monotonic() - started
        stop.set()
        assert await asyncio.wait_for(task, 5) == EXIT_OK
    # delays 0-0.01, 0.1, 0.2, 0.4 ... (each jittered down to half) → at most 6 dials in the first 1.5 s; a
    # loaded box may sleep longer than asked (one more per further second, generously); a tight loop: hundreds
    assert 2 <= dialled <= (6 if elapsed < 1.5 else 6 + int(elapsed))
    assert "connection closed" in read_status(tmp_path)["last_error"]


async def test_failed_handshake_503_is_retried(tmp_path):
    up = asyncio.Event()

    async def handler(ws, n):
        await ws.recv()
        up.set()
        await ws.wait_closed()

    stop = asyncio.Event()
    async with FakeServer(handler, reject=503) as server:
        task = start(server.url, tmp_path, stop)
        while len(server.auth) < 2:
            await asyncio.sleep(0.01)
        assert "503" in read_status(tmp_path)["last_error"]
        server.reject = None
        await asyncio.wait_for(up.wait(), 5)
        stop.set()
        assert await asyncio.wait_for(task, 5) == EXIT_OK


async def test_close_1013_at_capacity_is_retried_with_backoff_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_INITIAL_DELAY", "0.1")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_MIN_DELAY", "0.1")
    up = asyncio.Event()

    async def handler(ws, n):
        if n == 1:
            await ws.close(1013, "try again later")
            return
        await ws.recv()
        await ws.send(welcome())
        up.set()
        await ws.wait_closed()

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        task = start(server.url, tmp_path, stop)
        await asyncio.wait_for(up.wait(), 10)
        assert read_status(tmp_path)["connected"] is True
        stop.set()
        assert await asyncio.wait_for(task, 5) == EXIT_OK
    assert server.connections == 2


async def test_close_4409_stops_with_exit_4(tmp_path):
    async def handler(ws, n):
        await ws.recv()
        await ws.send(welcome())
        await ws.close(4409, "replaced")

    async with FakeServer(handler) as server:
        rc = await asyncio.wait_for(start(server.url, tmp_path, asyncio.Event()), 5)
    assert rc == EXIT_REPLACED
    assert server.connections == 1
    status = read_status(tmp_path)
    assert status["connected"] is False and "another agent connected" in status["last_error"]


async def test_close_4401_stops_with_exit_3(tmp_path, caplog):
    caplog.set_level("DEBUG")

    async def handler(ws, n):
        await ws.close(4401, "unknown credential")

    async with FakeServer(handler) as server:
        rc = await asyncio.wait_for(start(server.url, tmp_path, asyncio.Event()), 5)
    assert rc == EXIT_REFUSED and server.connections == 1
    agent_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("fleet.agent"))
    assert "> Authorization: <redacted>" in agent_log  # websockets logs headers at DEBUG...
    assert SECRET not in agent_log  # ...but never the agent's secret (the fake server's log may)


@pytest.mark.parametrize("status", [401, 403])
async def test_handshake_refused_returns_3_quickly(tmp_path, status, caplog):
    async def handler(ws, n):
        raise AssertionError("must not be reached")

    async with FakeServer(handler, reject=status) as server:
        started = time.monotonic()
        rc = await asyncio.wait_for(start(server.url, tmp_path, asyncio.Event()), 5)
    assert rc == EXIT_REFUSED
    assert time.monotonic() - started < 2
    assert len(server.auth) == 1
    assert "refused this node's credential" in read_status(tmp_path)["last_error"]
    assert "re-enroll with fleet-agent enroll" in caplog.text


async def test_stop_while_server_unreachable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = asyncio.Event()
    task = start(f"http://127.0.0.1:{port}", tmp_path, stop)
    await asyncio.sleep(0.3)
    assert not task.done()
    assert "cannot connect" in read_status(tmp_path)["last_error"]
    stop.set()
    assert await asyncio.wait_for(task, 2) == EXIT_OK


async def test_collector_failure_does_not_break_metrics(tmp_path):
    got = asyncio.Event()
    frames = []

    class Broken(SimulatedCollector):
        def sample(self, now=None):
            raise RuntimeError("driver hiccup")

    async def handler(ws, n):
        await ws.recv()
        await ws.send(welcome())
        for _ in range(2):
            frames.append(json.loads(await ws.recv()))
        got.set()
        await ws.wait_closed()

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        creds = Credentials(server=server.url, node_id=7, node_name="n", secret=SECRET)
        task = asyncio.create_task(run_agent(creds, Broken("a100x4", "n"), home=tmp_path, stop_event=stop))
        await asyncio.wait_for(got.wait(), 5)
        stop.set()
        assert await asyncio.wait_for(task, 5) == EXIT_OK
    assert [f["type"] for f in frames] == ["metrics", "metrics"]
    assert frames[0]["gpus"] == [] and frames[0]["host"]["memory_total_bytes"] > 0


def test_ws_url():
    assert ws_url("http://fleet:8000") == "ws://fleet:8000/ws/agent/"
    assert ws_url("https://fleet.example/") == "wss://fleet.example/ws/agent/"
    assert ws_url("https://fleet.example/prefix") == "wss://fleet.example/prefix/ws/agent/"
    with pytest.raises(ValueError):
        ws_url("ftp://x")


async def test_cli_run_process_stops_cleanly_on_sigterm(tmp_path):
    """The real ``fleet-agent run`` process: connects, then SIGTERM → clean close and exit 0."""
    hello = asyncio.Event()
    closes = []

    async def handler(ws, n):
        frame = parse_agent_frame(await ws.recv())
        assert frame.gpus == [] and "no GPUs" in frame.gpu_note
        await ws.send(welcome(interval=10))
        hello.set()
        async for _ in ws:
            pass
        closes.append(ws.close_code)

    async with FakeServer(handler) as server:
        save_credentials(Credentials(server.url, 7, "node-7", SECRET), tmp_path)
        env = {**os.environ, "FLEET_AGENT_HOME": str(tmp_path)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet.agent", "run", "--simulate", "cpu-only",
            env=env, cwd=Path(__file__).resolve().parents[2],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(hello.wait(), 10)
            await asyncio.sleep(0.1)
            assert read_status(tmp_path)["connected"] is True
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await asyncio.sleep(0.05)
    log = err.decode()
    assert proc.returncode == 0, log
    assert "no GPUs: simulated profile cpu-only has no GPUs" in log
    assert closes == [1000]
    assert read_status(tmp_path)["connected"] is False

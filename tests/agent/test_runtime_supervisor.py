"""The runtime supervisor against fake vllm / llama-server executables on PATH (tests/agent/fake_runtime.py):
start, readiness, kill → restart with backoff, giving up, stop with SIGTERM then SIGKILL, version switches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx2
import pytest

from fleet.agent.chat import ChatRelay
from fleet.agent.deployer import Deployer
from fleet.agent.protocol import Activate, Chat, ChatMessage
from fleet.agent.runtimes.llamacpp import LlamaCppAdapter
from fleet.agent.runtimes.process import RuntimeSettings
from fleet.agent.runtimes.supervisor import Supervisor
from fleet.agent.runtimes.vllm import VllmAdapter

REPO = "acme/tiny"
SHA1, SHA2 = "1" * 40, "2" * 40
FAST = RuntimeSettings(ready_timeout=20, stop_grace=2, backoff_initial=0.05, backoff_max=0.1, max_restarts=2,
                       stable_after=60)


async def until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped still "exists": read its state
    status = Path(f"/proc/{pid}/stat")
    return not status.exists() or status.read_text().split(") ")[1][0] != "Z"


def runs(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def supervisor_for(adapter, snapshot: Path, settings: RuntimeSettings = FAST) -> tuple[Supervisor, list[str]]:
    supervisor = Supervisor(adapter, lambda: [(REPO, SHA1, snapshot)], settings)
    reasons: list[str] = []
    supervisor.listeners.append(lambda _changed: reasons.extend(
        s.reason for s in supervisor.statuses() if s.reason and (not reasons or reasons[-1] != s.reason)))
    return supervisor, reasons


@pytest.fixture
def snapshot(tmp_path) -> Path:
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


async def test_vllm_runtime_starts_is_probed_ready_and_stops(fake_runtimes, snapshot):
    supervisor, _ = supervisor_for(VllmAdapter(), snapshot)
    supervisor.start()
    process = supervisor.get(REPO)
    assert supervisor.statuses()[0].state == "starting"
    await until(lambda: process.state == "ready", what="ready")
    status = supervisor.statuses()[0]
    assert (status.runtime, status.repo, status.sha, status.restarts) == ("vllm", REPO, SHA1, 0)
    [run] = runs(fake_runtimes)
    assert run["argv"] == ["serve", str(snapshot), "--served-model-name", REPO, "--host", "127.0.0.1",
                           "--port", str(status.port)]
    assert status.log_tail[0].startswith("$ ") and "vllm ready, serving acme/tiny" in status.log_tail
    async with httpx2.AsyncClient() as client:
        models = (await client.get(f"http://127.0.0.1:{status.port}/v1/models")).json()
    assert models["data"][0]["id"] == REPO
    await supervisor.close()
    assert not alive(run["pid"]) and supervisor.statuses() == []


async def test_a_killed_runtime_is_restarted_after_a_backoff(fake_runtimes, snapshot):
    supervisor, reasons = supervisor_for(VllmAdapter(), snapshot)
    supervisor.start()
    process = supervisor.get(REPO)
    await until(lambda: process.state == "ready")
    first = runs(fake_runtimes)[0]["pid"]
    os.kill(first, signal.SIGKILL)
    await until(lambda: process.restarts == 1 and process.state == "ready", what="restart")
    assert any(r.startswith("exited with code -9") and r.endswith("restarting in 0.05s") for r in reasons), reasons
    second = runs(fake_runtimes)[1]["pid"]
    assert second != first and alive(second)
    await supervisor.close()
    assert not alive(second)


async def test_a_runtime_that_cannot_load_backs_off_then_gives_up_with_the_reason(fake_runtimes, snapshot,
                                                                                   monkeypatch):
    monkeypatch.setenv("FAKE_RUNTIME_MODE", "crash")
    supervisor, reasons = supervisor_for(VllmAdapter(), snapshot)
    supervisor.start()
    process = supervisor.get(REPO)
    await until(lambda: process.given_up, what="giving up")
    cause = "exited with code 3: ValueError: config.json: hidden_size must be positive"
    assert [r for r in reasons if r.startswith(cause)] == [
        f"{cause}; restarting in 0.05s", f"{cause}; restarting in 0.1s",
        f"{cause}; gave up after 2 restarts (fix the cause, then activate the version again or restart the agent)"]
    status = supervisor.statuses()[0]
    assert status.state == "failed" and status.restarts == 2 and len(runs(fake_runtimes)) == 3
    assert "ValueError: config.json: hidden_size must be positive" in status.log_tail

    monkeypatch.setenv("FAKE_RUNTIME_MODE", "serve")  # the cause is fixed; activating again retries
    supervisor.sync(retry=REPO)
    fresh = supervisor.get(REPO)
    assert fresh is not process
    await until(lambda: fresh.state == "ready", what="ready after retry")
    await supervisor.close()


async def test_a_runtime_that_never_answers_is_killed_after_the_ready_timeout(fake_runtimes, snapshot, monkeypatch):
    monkeypatch.setenv("FAKE_RUNTIME_MODE", "hang")
    settings = RuntimeSettings(ready_timeout=0.5, stop_grace=2, max_restarts=0)
    supervisor, _ = supervisor_for(VllmAdapter(), snapshot, settings)
    supervisor.start()
    process = supervisor.get(REPO)
    await until(lambda: process.given_up)
    assert process.reason.startswith("not ready after 0.5s: vllm starting with serve")
    assert not alive(runs(fake_runtimes)[0]["pid"])
    await supervisor.close()


async def test_stop_sends_sigterm_then_sigkill_after_the_grace(fake_runtimes, snapshot, monkeypatch):
    monkeypatch.setenv("FAKE_RUNTIME_MODE", "stubborn")
    settings = RuntimeSettings(ready_timeout=20, stop_grace=0.3)
    supervisor, _ = supervisor_for(VllmAdapter(), snapshot, settings)
    supervisor.start()
    process = supervisor.get(REPO)
    await until(lambda: process.state == "ready")
    pid = runs(fake_runtimes)[0]["pid"]
    await supervisor.close()
    assert not alive(pid) and process.proc.returncode == -signal.SIGKILL
    assert "ignoring SIGTERM" in process.log


async def test_llamacpp_serves_the_gguf_file_and_the_relay_streams_its_answer(fake_runtimes, snapshot):
    (snapshot / "model-Q4_0.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    (snapshot / "model-Q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 20)  # the bigger one is chosen
    supervisor, _ = supervisor_for(LlamaCppAdapter(), snapshot)
    relay = ChatRelay(supervisor)
    frames = []

    async def send(frame):
        frames.append(frame)

    relay.attach(send)
    supervisor.start()
    process = supervisor.get(REPO)
    await until(lambda: process.state == "ready")
    assert runs(fake_runtimes)[0]["argv"] == ["-m", str(snapshot / "model-Q8_0.gguf"), "--alias", REPO,
                                              "--host", "127.0.0.1", "--port", str(process.port)]
    await relay.handle(Chat(type="chat", request_id="r1", messages=[ChatMessage(role="user", content="hi")]))
    await until(lambda: any(f.type == "chat.done" for f in frames), what="chat.done")
    chat = [f for f in frames if getattr(f, "request_id", None) == "r1"]
    assert "".join(f.text for f in chat if f.type == "chat.delta") == "Hello from a fake runtime."
    assert chat[-1].finish_reason == "stop" and chat[-1].usage == {"prompt_tokens": 3, "completion_tokens": 5}
    await until(lambda: process.tokens_served == 5 and process.requests_active == 0)
    await until(lambda: any(f.type == "runtime" and f.serving[0].tokens_served == 5 for f in frames),
                what="a runtime report with the counters")
    await relay.close()
    await supervisor.close()


async def test_llamacpp_without_a_gguf_file_fails_at_once(fake_runtimes, snapshot):
    supervisor, _ = supervisor_for(LlamaCppAdapter(), snapshot)
    supervisor.start()
    process = supervisor.get(REPO)
    await until(lambda: process.given_up)
    assert process.reason == f"no .gguf file in {snapshot}: llama.cpp serves GGUF models only"
    assert process.restarts == 0 and runs(fake_runtimes) == []
    await supervisor.close()


async def test_activating_a_version_through_the_deployer_switches_the_runtime(fake_runtimes, tmp_path):
    deployer = Deployer(tmp_path / "home", "secret", "http://127.0.0.1:9")

    def stage(sha: str) -> None:
        deployer.store.snapshot(REPO, sha).mkdir(parents=True)
        deployer.store.mark_staged(REPO, sha, 0)

    stage(SHA1)
    supervisor = Supervisor(VllmAdapter(), deployer.active_snapshots, FAST)
    deployer.on_activated = lambda repo: supervisor.sync(retry=repo)
    supervisor.start()
    assert supervisor.statuses() == []  # nothing active yet

    await deployer.handle(Activate(type="activate", command_id="c1", repo=REPO, sha=SHA1))
    await until(lambda: supervisor.get(REPO) is not None and supervisor.get(REPO).state == "ready")
    old_pid = runs(fake_runtimes)[0]["pid"]
    stage(SHA2)
    await deployer.handle(Activate(type="activate", command_id="c2", repo=REPO, sha=SHA2))
    await until(lambda: supervisor.get(REPO).sha == SHA2 and supervisor.get(REPO).state == "ready")
    assert not alive(old_pid)
    assert runs(fake_runtimes)[1]["argv"][1] == str(deployer.store.snapshot(REPO, SHA2))
    await supervisor.close()


AGENT = """
import asyncio, sys
from pathlib import Path
from fleet.agent.runtimes.supervisor import Supervisor
from fleet.agent.runtimes.vllm import VllmAdapter

async def main():
    Supervisor(VllmAdapter(), lambda: [("acme/tiny", "1" * 40, Path(sys.argv[1]))]).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_runtimes_die_with_a_killed_agent(fake_runtimes, snapshot):
    root = Path(__file__).resolve().parents[2]
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", AGENT, str(snapshot),
                                                 env={**os.environ, "PYTHONPATH": str(root)})
    try:
        await until(lambda: runs(fake_runtimes), what="the runtime to start")
        runtime = runs(fake_runtimes)[0]["pid"]
        assert alive(runtime)
    finally:
        agent.kill()
        await agent.wait()
    await until(lambda: not alive(runtime), timeout=10, what="the orphaned runtime to exit")

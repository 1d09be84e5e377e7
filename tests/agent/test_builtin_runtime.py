"""The builtin runtime for real: an agent (run_agent, --runtime builtin) with two active versions, the tiny
Llama and a broken copy of it, against a fake websocket peer standing in for the Fleet server. One agent and
its runtime processes serve the whole module (loading torch is the slow part); the tests talk to the runtime's
HTTP port directly and through the agent's chat relay, and watch ``/fleet/stats`` to prove stops stop."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
from pathlib import Path

import httpx2
import pytest
import pytest_asyncio
from websockets.asyncio.server import serve

from fleet.agent.collectors.simulated import SimulatedCollector
from fleet.agent.connection import EXIT_OK, run_agent
from fleet.agent.modelstore import ModelStore
from fleet.agent.protocol import (
    Chat,
    ChatCancel,
    ChatMessage,
    ChatParams,
    HealthCheck,
    Welcome,
    dump,
    parse_agent_frame,
)
from fleet.agent.state import Credentials, read_status

pytest.importorskip("torch", reason="the builtin runtime needs torch (pip install 'fleet[runtime]')")
pytest.importorskip("transformers", reason="the builtin runtime needs transformers (pip install 'fleet[runtime]')")
pytestmark = pytest.mark.asyncio(loop_scope="module")

GOOD, BROKEN = "acme/tiny", "acme/broken"
SHA, BROKEN_SHA = "a" * 40, "b" * 40
ROOT = Path(__file__).resolve().parents[2]
LONG = 3000  # max_tokens of answers that must be cut short: the tiny model never ends on its own


async def until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async def check() -> bool:
        result = predicate()
        return bool(await result if inspect.isawaitable(result) else result)

    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Peer:
    """Plays the Fleet server: welcomes the agent, records every frame it sends, sends what a test asks."""

    def __init__(self) -> None:
        self.frames: list = []
        self.ws = None

    async def handler(self, ws) -> None:
        self.ws = ws
        self.frames.append(parse_agent_frame(await ws.recv()))
        await ws.send(dump(Welcome(type="welcome", node_id=7, node_name="node-7", heartbeat_interval=10,
                                   metrics_interval=60, offline_after=30)))
        async for message in ws:
            self.frames.append(parse_agent_frame(message))  # every agent frame must pass the server's parser

    async def send(self, frame) -> None:
        await self.ws.send(dump(frame))

    def serving(self) -> dict:
        reports = [f for f in self.frames if f.type in ("hello", "runtime")]
        return {status.repo: status for status in reports[-1].serving} if reports else {}

    def of(self, request_id: str) -> list:
        return [f for f in self.frames if getattr(f, "request_id", None) == request_id]

    def event(self, command_id: str):
        events = [f for f in self.frames if f.type == "event" and f.command_id == command_id]
        return events[-1] if events else None

    async def chat(self, request_id: str, repo: str | None, content: str, **params) -> list:
        await self.send(Chat(type="chat", request_id=request_id, repo=repo,
                             messages=[ChatMessage(role="user", content=content)], params=ChatParams(**params)))
        await until(lambda: any(f.type in ("chat.done", "chat.error") for f in self.of(request_id)),
                    what=f"the end of {request_id}")
        return self.of(request_id)


class Node:
    def __init__(self, peer: Peer, home: Path, port: int):
        self.peer, self.home, self.port = peer, home, port
        self.http = httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False)

    async def stats(self) -> dict:
        return (await self.http.get("/fleet/stats")).json()

    async def complete(self, content: str, **params) -> dict:
        body = {"model": GOOD, "messages": [{"role": "user", "content": content}], **params}
        response = await self.http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async def answer(self, content: str, **params) -> str:
        return (await self.complete(content, **params))["choices"][0]["message"]["content"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("node-home")
    store = ModelStore(home)
    for repo, sha in ((GOOD, SHA), (BROKEN, BROKEN_SHA)):
        shutil.copytree(tiny_model, store.snapshot(repo, sha))
        store.mark_staged(repo, sha, 1)
        store.activate(repo, sha)
    config = store.snapshot(BROKEN, BROKEN_SHA) / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "no-such-architecture"}))
    env = {"FLEET_RUNTIME_MAX_RESTARTS": "0",  # the broken one fails for good
           "FLEET_RUNTIME_THREADS": "1",  # many times faster for this model on a shared CPU
           "PYTHONPATH": str(ROOT)}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    peer, stop = Peer(), asyncio.Event()
    server = await serve(peer.handler, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    creds = Credentials(server=url, node_id=7, node_name="node-7", secret="s")
    agent = asyncio.create_task(run_agent(creds, SimulatedCollector("cpu-only", seed="node-7"), home=home,
                                          stop_event=stop, runtime="builtin"))
    try:
        await until(lambda: GOOD in peer.serving() and peer.serving()[GOOD].state == "ready", timeout=240,
                    what="the builtin runtime to be ready")
        node = Node(peer, home, peer.serving()[GOOD].port)
        yield node
        await node.http.aclose()
    finally:
        stop.set()
        assert await asyncio.wait_for(agent, 30) == EXIT_OK
        server.close()
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


# ---- the runtime's HTTP API ---------------------------------------------------------------------------


async def test_the_agent_reports_its_runtimes(node):
    hello = node.peer.frames[0]
    assert hello.type == "hello" and hello.runtimes[0] == "builtin"
    assert {s.repo: s.state for s in hello.serving} == {GOOD: "starting", BROKEN: "starting"}
    await until(lambda: node.peer.serving().get(BROKEN) and node.peer.serving()[BROKEN].state == "failed",
                timeout=120, what="the broken version to fail")
    broken = node.peer.serving()[BROKEN]
    assert broken.reason.startswith("exited with code 1: ") and "cannot load the model" in broken.reason
    assert "gave up after 0 restarts" in broken.reason and broken.log_tail
    good = node.peer.serving()[GOOD]
    assert (good.runtime, good.sha, good.restarts) == ("builtin", SHA, 0)
    assert any("ready in" in line for line in good.log_tail)
    local = {s["repo"]: s for s in read_status(node.home)["serving"]}  # status.json names the port too
    assert local[GOOD]["port"] == node.port and local[GOOD]["state"] == "ready"


async def test_health_models_and_stats(node):
    assert (await node.http.get("/health")).json() == {"status": "ok"}
    models = (await node.http.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [GOOD] and models["data"][0]["max_model_len"] == 4096
    assert set(await node.stats()) == {"completion_tokens_total", "requests_total", "requests_active"}


async def test_non_streamed_answers_honour_max_tokens_temperature_top_p_and_seed(node):
    greedy = await node.complete("hi", temperature=0, max_tokens=12)
    choice = greedy["choices"][0]
    assert greedy["object"] == "chat.completion" and greedy["model"] == GOOD
    assert choice["finish_reason"] == "length" and choice["message"]["role"] == "assistant"
    assert greedy["usage"]["completion_tokens"] == 12 and greedy["usage"]["prompt_tokens"] > 5
    assert len(choice["message"]["content"]) == 12  # one byte-level token per ASCII character
    assert await node.answer("hi", temperature=0, max_tokens=12) == choice["message"]["content"]
    # top_p this small keeps only the most likely token: sampling becomes greedy
    assert await node.answer("hi", temperature=1, top_p=1e-6, max_tokens=12) == choice["message"]["content"]
    first = await node.answer("hi", temperature=1.5, seed=42, max_tokens=8)
    assert await node.answer("hi", temperature=1.5, seed=42, max_tokens=8) == first
    assert len(await node.answer("hi")) == 64  # generation_config.json's max_new_tokens is the default


async def test_stop_strings_end_the_answer_and_are_not_emitted(node):
    full = await node.answer("tell me", temperature=0, max_tokens=24)
    stop = full[3:5]
    expected = full[:full.index(stop)]
    answer = await node.complete("tell me", temperature=0, max_tokens=24, stop=stop)
    assert answer["choices"][0]["message"]["content"] == expected
    assert answer["choices"][0]["finish_reason"] == "stop"
    listed = await node.complete("tell me", temperature=0, max_tokens=24, stop=["\u2603", stop])
    assert listed["choices"][0]["message"]["content"] == expected


async def read_stream(node: Node, body: dict) -> tuple[list[dict], str]:
    events = []
    async with node.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return chunks, text


async def test_streamed_answers_match_and_end_with_usage_when_asked(node):
    expected = await node.answer("stream", temperature=0, max_tokens=10)
    body = {"model": GOOD, "messages": [{"role": "user", "content": "stream"}], "temperature": 0,
            "max_tokens": 10, "stream": True, "stream_options": {"include_usage": True}}
    chunks, text = await read_stream(node, body)
    assert text == expected
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    chunks, text = await read_stream(node, {**body, "stream_options": None, "stop": expected[4:6]})
    assert text == expected[:expected.index(expected[4:6])] and "usage" not in chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ({"model": "nope/model", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ({"model": GOOD, "messages": []}, 400, "messages"),
    ({"model": GOOD, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": GOOD, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content[0]"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "temperature": -1}, 400, "temperature"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "top_p"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4090}, 400, "max_tokens"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "stop": ["a", ""]}, 400, "stop"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "stop": list("abcde")}, 400, "stop"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "seed": 1.5}, 400, "seed"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
    ({"model": GOOD, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
    ([1, 2], 400, None),
])
async def test_bad_requests_get_openai_errors_naming_the_field(node, body, status, param):
    response = await node.http.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    if param:
        assert param.split("[")[0] in error["message"]


async def test_malformed_json_and_unknown_routes(node):
    response = await node.http.post("/v1/chat/completions", content=b"{nope",
                                    headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert (await node.http.get("/v1/nothing")).status_code == 404
    assert (await node.http.post("/v1/completions", json={})).status_code == 404


async def test_concurrent_requests_queue_instead_of_interleaving(node):
    prompts = ["alpha", "bravo", "charlie"]
    expected = [await node.answer(p, temperature=0, max_tokens=16) for p in prompts]
    assert len(set(expected)) > 1  # different prompts, different answers: a mix-up would show

    async def stream(prompt):
        body = {"model": GOOD, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": 16, "stream": True}
        return (await read_stream(node, body))[1]

    streamed = await asyncio.gather(*(stream(p) for p in prompts), node.answer("alpha", temperature=0, max_tokens=16))
    assert list(streamed) == [*expected, expected[0]]


async def test_a_burst_of_new_connections_is_not_dropped(node):
    """The agent opens a connection per chat in flight: 64 arriving at once must all be answered (the stdlib
    server's default listen backlog of 5 dropped most of them before any response)."""
    body = {"model": GOOD, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx2.AsyncClient(base_url=node.http.base_url, timeout=60, trust_env=False, limits=limits) as http:
        async def streamed() -> str:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                return "".join([line async for line in response.aiter_lines()])

        answers = await asyncio.gather(*(streamed() for _ in range(64)), return_exceptions=True)
    failed = [repr(answer) for answer in answers if isinstance(answer, Exception) or "[DONE]" not in answer]
    assert not failed, failed


async def idle(node: Node) -> bool:
    return (await node.stats())["requests_active"] == 0


async def test_a_client_that_disconnects_mid_stream_stops_generation(node):
    before = (await node.stats())["completion_tokens_total"]
    body = {"model": GOOD, "messages": [{"role": "user", "content": "go on"}], "temperature": 0,
            "max_tokens": LONG, "stream": True}
    received = 0
    async with node.http.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            received += '"content"' in line
            if received >= 5:
                break  # leaving the block closes the connection
    await until(lambda: idle(node), what="the generation to end")
    generated = (await node.stats())["completion_tokens_total"] - before
    assert 4 <= generated < LONG


async def test_a_client_that_disconnects_while_waiting_for_a_whole_answer_stops_generation(node):
    before = (await node.stats())["completion_tokens_total"]
    body = json.dumps({"model": GOOD, "messages": [{"role": "user", "content": "go on"}], "temperature": 0,
                       "max_tokens": LONG}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()

    async def generating() -> bool:
        return (await node.stats())["completion_tokens_total"] > before + 2

    await until(generating, what="generation to start")
    writer.close()
    await until(lambda: idle(node), what="the generation to end")
    assert (await node.stats())["completion_tokens_total"] - before < LONG


# ---- through the agent: chat relay and health checks ---------------------------------------------------


async def test_the_relay_streams_many_chats_at_once(node):
    prompts = {"r-a": "alpha", "r-b": "bravo", "r-c": "charlie"}
    expected = {rid: await node.answer(p, temperature=0, max_tokens=16) for rid, p in prompts.items()}
    results = await asyncio.gather(*(node.peer.chat(rid, GOOD, p, temperature=0, max_tokens=16)
                                     for rid, p in prompts.items()))
    for rid, frames in zip(prompts, results, strict=True):
        assert "".join(f.text for f in frames if f.type == "chat.delta") == expected[rid]
        done = frames[-1]
        assert done.type == "chat.done" and done.finish_reason == "length"
        assert done.usage["completion_tokens"] == 16 and done.usage["prompt_tokens"] > 0
    frames = await node.peer.chat("r-only", None, "hi", temperature=0, max_tokens=4)  # no repo: ambiguous here
    assert frames[-1].type == "chat.error" and "several models" in frames[-1].error
    await until(lambda: (node.peer.serving()[GOOD].tokens_served >= 48
                         and node.peer.serving()[GOOD].requests_active == 0), what="a runtime report with the counters")


async def test_chat_cancel_stops_the_generation_on_the_runtime(node):
    before = (await node.stats())["completion_tokens_total"]
    await node.peer.send(Chat(type="chat", request_id="r-long", repo=GOOD, params=ChatParams(temperature=0,
                              max_tokens=LONG), messages=[ChatMessage(role="user", content="go on")]))
    await until(lambda: any(f.type == "chat.delta" for f in node.peer.of("r-long")), what="the first delta")
    await node.peer.send(ChatCancel(type="chat.cancel", request_id="r-long"))
    await until(lambda: any(f.type == "chat.done" for f in node.peer.of("r-long")), what="chat.done")
    assert node.peer.of("r-long")[-1].finish_reason == "cancelled"
    await until(lambda: idle(node), what="the runtime to stop generating")
    assert (await node.stats())["completion_tokens_total"] - before < LONG


@pytest.mark.parametrize(("repo", "params", "message"), [
    (BROKEN, {}, "the runtime for acme/broken is not serving: exited with code 1"),
    ("nobody/here", {}, "nobody/here is not active on this node (active: acme/broken, acme/tiny)"),
    (GOOD, {"max_tokens": 4090}, "the runtime for acme/tiny refused the request: max_tokens:"),
])
async def test_chats_that_cannot_be_answered_get_a_clear_error(node, repo, params, message):
    frames = await node.peer.chat(f"r-err-{len(node.peer.frames)}", repo, "hi", **params)
    assert frames[-1].type == "chat.error" and message in frames[-1].error


async def test_health_checks(node):
    answer = await node.answer("ping", temperature=0, max_tokens=128)
    checks = {
        "hc-ok": HealthCheck(type="healthcheck", command_id="hc-ok", repo=GOOD, sha=SHA, prompt="ping",
                             expect=answer[10:20]),
        "hc-any": HealthCheck(type="healthcheck", command_id="hc-any", repo=GOOD, sha=SHA, prompt="ping"),
        "hc-expect": HealthCheck(type="healthcheck", command_id="hc-expect", repo=GOOD, sha=SHA, prompt="ping",
                                 expect="\u2603 not in the answer"),
        "hc-sha": HealthCheck(type="healthcheck", command_id="hc-sha", repo=GOOD, sha="c" * 40, prompt="ping"),
        "hc-broken": HealthCheck(type="healthcheck", command_id="hc-broken", repo=BROKEN, sha=BROKEN_SHA,
                                 prompt="ping"),
        # 128 tokens take far longer than 50 ms here (a few ms each at best)
        "hc-slow": HealthCheck(type="healthcheck", command_id="hc-slow", repo=GOOD, sha=SHA, prompt="ping",
                               timeout=0.05),
    }
    for check in checks.values():
        await node.peer.send(check)
    await until(lambda: all(node.peer.event(cid) for cid in checks), what="every health check's result")
    event = node.peer.event
    assert event("hc-ok").state == "succeeded" and event("hc-ok").detail == answer and event("hc-ok").error is None
    assert event("hc-any").state == "succeeded"
    assert event("hc-expect").state == "failed" and event("hc-expect").detail == answer
    assert "does not contain the expected text" in event("hc-expect").error
    assert event("hc-sha").state == "failed"
    assert event("hc-sha").error == f"this node does not serve {GOOD}@cccccccccccc (it serves {GOOD}@{SHA[:12]})"
    assert event("hc-broken").state == "failed" and "the runtime for acme/broken failed: exited with code 1" in \
        event("hc-broken").error
    assert event("hc-slow").state == "failed"
    assert event("hc-slow").error == f"no answer from {GOOD}@{SHA[:12]} within 0.05s"
    await until(lambda: idle(node), what="the abandoned health check to stop generating")

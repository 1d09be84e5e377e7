"""Issue 7's acceptance with real processes: Daphne, a real `fleet-agent run --runtime builtin`, and the builtin
runtime serving the tiny Llama (imported into the hub, deployed and activated on the node like any model).

One stack for the whole module (importing torch in a runtime costs tens of seconds on a busy CPU). The tests
run in file order; the last one kills the agent. "Stop really stops" is asserted on the runtime's own counter
(``GET /fleet/stats`` on its port), never on what the relay says.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request

import openai
import pytest

from tests.integration.chat_stack import BROKEN, GOOD, ChatSocket, ChatWorld, runtime_stats
from tests.integration.harness import wait_until

pytest.importorskip("torch", reason="the builtin runtime needs torch (pip install 'fleet[runtime]')")
pytest.importorskip("transformers", reason="the builtin runtime needs transformers (pip install 'fleet[runtime]')")
pytestmark = pytest.mark.integration

OFFLINE_AFTER = 5
LONG = 2000  # max_tokens of an answer that must be cut short: the tiny model always writes exactly max_tokens


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = ChatWorld(tmp_path_factory.mktemp("chat-e2e"), offline_after=OFFLINE_AFTER, with_broken=True)
    try:
        yield world.start()
    finally:
        world.stop()


def client(world: ChatWorld, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{world.stack.url()}/v1", api_key=key or world.key, max_retries=0,
                              timeout=60)


def ask(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


async def settled_tokens(base_url: str) -> int:
    """The runtime's generated-token count once nothing runs; it must not grow afterwards."""
    deadline = time.monotonic() + 20
    while (stats := runtime_stats(base_url))["requests_active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert stats["requests_active"] == 0, stats
    await asyncio.sleep(1.0)  # a generation that was not really stopped would add tokens by now
    later = runtime_stats(base_url)
    assert later["completion_tokens_total"] == stats["completion_tokens_total"], (stats, later)
    return later["completion_tokens_total"]


async def test_openai_client_against_the_gateway(world):
    api = client(world)
    assert GOOD in [model.id for model in (await api.models.list()).data]
    result = await api.chat.completions.create(model=GOOD, messages=ask("Hello"), max_tokens=12, temperature=0)
    answer = result.choices[0]
    assert answer.finish_reason == "length" and answer.message.content
    assert result.usage.completion_tokens == 12 and result.usage.prompt_tokens > 0

    stream = await api.chat.completions.create(model=GOOD, messages=ask("Hello"), max_tokens=12, temperature=0,
                                               stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.message.content  # greedy: the same answer streamed or not
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 12

    with pytest.raises(openai.AuthenticationError):
        await client(world, "fak_not-a-key").chat.completions.create(model=GOOD, messages=ask("x"))
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.create(model="nobody/nothing", messages=ask("x"))
    with pytest.raises(openai.BadRequestError) as bad:
        await api.chat.completions.create(model=GOOD, messages=ask("x"), top_p=3)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError) as bad:
        await api.chat.completions.create(model=GOOD, messages=[])
    assert bad.value.body["param"] == "messages"


async def test_stop_in_the_playground_stops_the_runtime(world):
    url = world.runtime_url()
    before = await settled_tokens(url)
    async with ChatSocket(world.stack.url(), world.cookie) as socket:
        await socket.start("long-1", "Tell me everything.", max_tokens=LONG)
        started = await socket.next(30)
        assert started["type"] == "chat.started" and started["model"] == GOOD, started
        assert started["node"]["id"] == world.node_id and started["revision"] == "v1"
        received = ""
        while len(received) < 5:
            message = await socket.next(30)
            assert message["type"] == "chat.delta", message
            received += message["text"]
        await socket.cancel("long-1")
        _, end = await socket.until_end("long-1", 15)
    assert end["type"] == "chat.done" and end["finish_reason"] == "cancelled", end
    generated = await settled_tokens(url) - before
    assert 5 <= generated < LONG // 2, generated


async def test_a_gateway_client_that_hangs_up_stops_the_runtime(world):
    url = world.runtime_url()
    before = await settled_tokens(url)
    stream = await client(world).chat.completions.create(model=GOOD, messages=ask("Tell me everything."),
                                                         max_tokens=LONG, stream=True)
    received = ""
    async for chunk in stream:
        received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        if len(received) >= 5:
            break
    await stream.close()  # drops the HTTP connection mid-stream
    generated = await settled_tokens(url) - before
    assert 5 <= generated < LONG // 2, generated


async def test_a_killed_runtime_comes_back_by_itself(world):
    port = world.runtime(GOOD)["port"]
    restarts = world.runtime(GOOD)["restarts"]
    killed = world.runtime_pid(port)
    os.kill(killed, signal.SIGKILL)
    back = world.wait_runtime(GOOD, "ready", 120, lambda row: row["restarts"] == restarts + 1)
    assert world.runtime_pid(back["port"]) != killed  # a new process, on the port the node now reports
    result = await client(world).chat.completions.create(model=GOOD, messages=ask("Still there?"), max_tokens=8)
    assert result.usage.completion_tokens == 8 and result.choices[0].message.content


async def test_a_runtime_that_cannot_start_says_why_and_is_not_routed_to(world):
    row = world.wait_runtime(BROKEN, "failed", 180, lambda r: "gave up" in r["reason"])
    assert "cannot load the model" in row["reason"] and "exited with code 1" in row["reason"], row
    assert row["restarts"] == 1 and any("cannot load the model" in line for line in row["log_tail"]), row

    request = urllib.request.Request(f"{world.stack.url()}/nodes/{world.node_id}/",
                                     headers={"Cookie": world.cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode()
    assert BROKEN in page and "Failed" in page and "cannot load the model" in page
    assert "gave up after 1 restarts" in page

    # Served by no node: the gateway says 503 (retry later), lists only the good model, and never routes it.
    served_before = runtime_stats(world.runtime_url())["requests_total"]
    api = client(world)
    with pytest.raises(openai.InternalServerError) as unavailable:
        await api.chat.completions.create(model=BROKEN, messages=ask("x"))
    assert unavailable.value.status_code == 503 and unavailable.value.response.headers["Retry-After"]
    assert "failed" in unavailable.value.message
    assert [model.id for model in (await api.models.list()).data] == [GOOD]
    async with ChatSocket(world.stack.url(), world.cookie) as socket:
        await socket.start("broken-1", "x", target={"model": BROKEN})
        _, end = await socket.until_end("broken-1", 10)
    assert end["type"] == "chat.error" and "no online node is serving" in end["error"], end
    assert runtime_stats(world.runtime_url())["requests_total"] == served_before


async def test_a_node_that_stops_answering_mid_answer_ends_the_answer_with_an_error(world):
    """A machine that freezes or loses power never closes its socket: the relay's silence limit
    (FLEET_OFFLINE_AFTER) ends the answer. SIGSTOP freezes the agent with its connection open."""
    async with ChatSocket(world.stack.url(), world.cookie) as socket:
        await socket.start("frozen", "Tell me everything.", max_tokens=LONG)
        assert (await socket.next(30))["type"] == "chat.started"
        assert (await socket.next(30))["type"] == "chat.delta"
        frozen_at = time.monotonic()
        os.kill(world.agent.process.pid, signal.SIGSTOP)
        try:
            _, end = await socket.until_end("frozen", OFFLINE_AFTER + 10)
            elapsed = time.monotonic() - frozen_at
        finally:
            os.kill(world.agent.process.pid, signal.SIGCONT)
    assert end["type"] == "chat.error" and "chat-node stopped answering" in end["error"], end
    assert elapsed <= OFFLINE_AFTER + 1.5, elapsed

    async def answered() -> bool:  # the thawed agent carries on (reconnecting if the server closed its socket)
        try:
            result = await client(world).chat.completions.create(model=GOOD, messages=ask("Back?"), max_tokens=4)
        except openai.APIStatusError:
            return False
        return result.usage.completion_tokens == 4

    deadline = time.monotonic() + 30
    while not await answered():
        assert time.monotonic() < deadline, f"no answer after the agent thawed:\n{world.agent.log()}"
        await asyncio.sleep(0.5)


async def test_a_node_killed_mid_answer_ends_the_answer_with_an_error(world):
    """Last: it kills the agent (and with it, its runtimes)."""
    async with ChatSocket(world.stack.url(), world.cookie) as socket:
        await socket.start("doomed", "Tell me everything.", max_tokens=LONG)
        assert (await socket.next(30))["type"] == "chat.started"
        assert (await socket.next(30))["type"] == "chat.delta"
        killed_at = time.monotonic()
        world.agent.kill()
        _, end = await socket.until_end("doomed", OFFLINE_AFTER + 5)
        elapsed = time.monotonic() - killed_at
    assert end["type"] == "chat.error" and "chat-node" in end["error"] and "try again" in end["error"], end
    assert elapsed <= OFFLINE_AFTER + 1, elapsed
    wait_until(lambda: world.stack.node_status("chat-node") == "offline", OFFLINE_AFTER + 10, "the node offline")

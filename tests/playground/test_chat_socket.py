"""`/ws/chat/` through the real AgentConsumer to a fake agent speaking the real protocol."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async

from fleet.inventory.models import NodeRuntime, NodeStatus
from fleet.inventory.services import set_status
from tests.playground.fakeagent import REPO, SHA, CommunicatorAgent, hold, runtime, scripted

pytestmark = pytest.mark.django_db(transaction=True)


def start(request_id: str = "r1", text: str = "hello there", **target) -> dict:
    return {"type": "chat.start", "request_id": request_id, "target": target or {"model": REPO},
            "messages": [{"role": "user", "content": text}], "params": {"temperature": 0.2, "max_tokens": 32}}


async def connected(browser, user):
    comm = await browser(user)
    ok, _ = await comm.connect()
    assert ok
    return comm


async def answer(comm, request_id: str = "r1", timeout: float = 10) -> tuple[list[dict], dict]:
    """Frames for ``request_id`` up to its done/error (frames of other requests are not expected)."""
    frames = []
    while True:
        frame = await comm.receive_json_from(timeout=timeout)
        assert frame.get("request_id") == request_id, frame
        frames.append(frame)
        if frame["type"] in ("chat.done", "chat.error"):
            return frames, frame


@pytest.fixture
async def agent(make_node):
    node, secret = await database_sync_to_async(make_node)("gpu-01")
    fake = await CommunicatorAgent(secret).start()
    fake.node = node
    yield fake
    await fake.stop()


async def test_operator_chats_with_a_ready_runtime(browser, bob, agent):
    comm = await connected(browser, bob)
    await comm.send_json_to(start(text="the capital of France"))
    frames, last = await answer(comm)
    started = frames[0]
    assert started["type"] == "chat.started"
    assert (started["node"], started["model"], started["sha"]) == ({"id": agent.node.pk, "name": "gpu-01"}, REPO, SHA)
    assert "".join(f["text"] for f in frames if f["type"] == "chat.delta") == "the capital of France"
    assert last["type"] == "chat.done" and last["finish_reason"] == "stop"
    assert last["usage"] == {"prompt_tokens": 7, "completion_tokens": 4}
    assert last["ttft_ms"] is not None and last["ttft_ms"] >= 0
    chat = agent.chats[0]
    assert chat["repo"] == REPO and chat["request_id"] != "r1"  # the agent gets a server-made id
    assert chat["params"] == {"temperature": 0.2, "max_tokens": 32, "stop": []}
    await comm.disconnect()


async def test_two_browsers_at_once_never_see_each_others_deltas(browser, bob, alice, agent):
    async def interleaved(fake, frame):
        await fake.wait_for_chats(2)  # both requests in flight before anyone answers
        await scripted(fake, frame)

    agent.reply = interleaved
    first, second = await connected(browser, bob), await connected(browser, alice)
    await first.send_json_to(start("r1", "one two three four five"))
    await second.send_json_to(start("r1", "alpha beta gamma delta epsilon"))  # same client id on purpose
    (frames_1, done_1), (frames_2, done_2) = await asyncio.gather(answer(first), answer(second))
    assert "".join(f["text"] for f in frames_1 if f["type"] == "chat.delta") == "one two three four five"
    assert "".join(f["text"] for f in frames_2 if f["type"] == "chat.delta") == "alpha beta gamma delta epsilon"
    assert done_1["type"] == done_2["type"] == "chat.done"
    assert len({chat["request_id"] for chat in agent.chats}) == 2
    await first.disconnect()
    await second.disconnect()


async def test_cancel_reaches_the_agent(browser, bob, agent):
    agent.reply = hold
    comm = await connected(browser, bob)
    await comm.send_json_to(start())
    assert (await comm.receive_json_from(timeout=10))["type"] == "chat.started"
    assert (await comm.receive_json_from(timeout=10))["text"] == "thinking"
    await comm.send_json_to({"type": "chat.cancel", "request_id": "r1"})
    _, last = await answer(comm)
    assert last["type"] == "chat.done" and last["finish_reason"] == "cancelled"
    assert agent.cancels == [agent.chats[0]["request_id"]]
    await comm.disconnect()


async def test_closing_the_browser_cancels_on_the_node(browser, bob, agent):
    agent.reply = hold
    comm = await connected(browser, bob)
    await comm.send_json_to(start())
    assert (await comm.receive_json_from(timeout=10))["type"] == "chat.started"
    await comm.disconnect()
    await asyncio.wait_for(agent.cancelled(agent.chats[0]["request_id"]).wait(), 10)


async def test_agent_disconnecting_mid_answer_ends_it_with_an_error_quickly(browser, bob, agent):
    agent.reply = hold
    comm = await connected(browser, bob)
    await comm.send_json_to(start())
    assert (await comm.receive_json_from(timeout=10))["type"] == "chat.started"
    assert (await comm.receive_json_from(timeout=10))["type"] == "chat.delta"
    began = time.monotonic()
    await agent.stop()
    _, last = await answer(comm, timeout=5)
    assert last["type"] == "chat.error" and "gpu-01 disconnected" in last["error"]
    assert time.monotonic() - began < 5
    await comm.disconnect()


async def test_hostile_agent_cannot_write_into_requests_it_was_not_given(browser, bob, agent):
    async def hostile(fake, frame):
        for request_id in ("r1", "0" * 32, frame["request_id"] + "x"):
            await fake.send({"type": "chat.delta", "v": 1, "request_id": request_id, "text": "INJECTED"})
            await fake.send({"type": "chat.done", "v": 1, "request_id": request_id})
        await scripted(fake, frame)

    agent.reply = hostile
    comm = await connected(browser, bob)
    await comm.send_json_to(start(text="honest answer"))
    frames, last = await answer(comm)
    assert "".join(f["text"] for f in frames if f["type"] == "chat.delta") == "honest answer"
    assert last["type"] == "chat.done"
    await comm.disconnect()


async def test_no_ready_node_failed_runtime_and_offline_node_are_never_chosen(browser, bob, make_node):
    node, secret = await database_sync_to_async(make_node)("gpu-09")
    failed = await CommunicatorAgent(secret, serving=[runtime(state="failed", reason="CUDA out of memory")]).start()
    comm = await connected(browser, bob)
    await comm.send_json_to(start())
    _, last = await answer(comm)
    assert last["type"] == "chat.error" and "no online node is serving" in last["error"] and "gpu-09" in last["error"]
    assert failed.chats == []

    await failed.send({"type": "runtime", "v": 1, "serving": [runtime()]})  # recovered
    await _wait(lambda: NodeRuntime.objects.filter(node=node, state="ready").exists())
    await database_sync_to_async(set_status)(node.pk, NodeStatus.OFFLINE)  # ... but the sweeper gave up on it
    await comm.send_json_to(start("r2"))
    _, last = await answer(comm, "r2")
    assert last["type"] == "chat.error" and failed.chats == []

    await comm.send_json_to(start("r3", model="nobody/unknown"))
    _, last = await answer(comm, "r3")
    assert "is not a model this fleet knows" in last["error"]
    await failed.stop()
    await comm.disconnect()


async def test_a_node_target_and_a_pinned_version(browser, bob, agent):
    comm = await connected(browser, bob)
    await comm.send_json_to(start("n1", "by node", node=agent.node.pk))
    frames, last = await answer(comm, "n1")
    assert frames[0]["type"] == "chat.started" and last["type"] == "chat.done"
    await comm.send_json_to(start("v1", "other version", model=REPO, sha="b" * 40))
    _, last = await answer(comm, "v1")
    assert last["type"] == "chat.error" and "bbbbbbbbbbbb" in last["error"]
    await comm.disconnect()


@pytest.mark.parametrize("frame, detail", [
    ({"type": "chat.start", "request_id": "bad id!", "target": {"model": REPO},
      "messages": [{"role": "user", "content": "x"}]}, "request_id: String should match pattern"),
    ({"type": "chat.start", "request_id": "r1", "target": {"model": REPO}, "messages": []}, "messages: List should"),
    ({"type": "chat.start", "request_id": "r1", "target": {"model": REPO},
      "messages": [{"role": "user", "content": "x"}], "params": {"temperature": 9}}, "params.temperature: Input"),
    ({"type": "subscribe"}, "type: must be 'chat.start' or 'chat.cancel'"),
])
async def test_bad_frames_name_the_field(browser, bob, frame, detail):
    comm = await connected(browser, bob)
    await comm.send_json_to(frame)
    reply = await comm.receive_json_from(timeout=5)
    assert reply["type"] == "error" and reply["detail"].startswith(detail), reply
    await comm.disconnect()


@pytest.mark.parametrize("who", ["charlie", "outsider", None])
async def test_viewers_outsiders_and_anonymous_are_refused(browser, charlie, outsider, who):
    comm = await browser({"charlie": charlie, "outsider": outsider}.get(who))
    connected_, _ = await comm.connect()
    assert connected_
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4403}


async def test_foreign_origin_is_refused(bob):
    from channels.testing import WebsocketCommunicator

    from fleet.asgi import application
    from tests.playground.conftest import _cookie

    comm = WebsocketCommunicator(application, "/ws/chat/", headers=[
        (b"origin", b"https://evil.example"), (b"cookie", await database_sync_to_async(_cookie)(bob))])
    connected_, _ = await comm.connect()
    assert connected_ is False


async def _wait(predicate, timeout: float = 10) -> None:
    check = database_sync_to_async(predicate)
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_a_fast_answer_is_not_cut_by_the_telemetry_frame_budget(browser, bob, make_node, settings):
    """Deltas of a chat the server asked for pass even when they outrun the agent's telemetry budget."""
    settings.FLEET_AGENT_MAX_FRAMES_PER_SECOND = 2  # burst 10: far fewer than the deltas below
    node, secret = await database_sync_to_async(make_node)("gpu-01")
    words = [f"w{n}" for n in range(150)]
    fake = await CommunicatorAgent(secret, words=words).start()
    try:
        comm = await connected(browser, bob)
        await comm.send_json_to(start(text="count"))
        frames, last = await answer(comm)
        assert last["type"] == "chat.done"
        assert "".join(f["text"] for f in frames if f["type"] == "chat.delta") == " ".join(words)
        await comm.disconnect()
    finally:
        await fake.stop()

"""The relay's own guarantees, with a scripted node connection on the channel layer: an answer never
hangs (silence → error within FLEET_OFFLINE_AFTER), keepalives hold a slow answer open, a second
connection of the node cannot answer, and the agent connection going silent ends answers too."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from fleet import events
from fleet.playground import targets
from fleet.playground.relay import RelayError, open_chat
from fleet.playground.targets import Target
from tests.playground.fakeagent import REPO, SHA, CommunicatorAgent, hold

TARGET = Target(node_id=991, node_name="gpu-x", repo=REPO, sha=SHA, runtime="builtin")
CHAT = {"messages": [{"role": "user", "content": "hi"}], "params": {}}


async def node_connection(script):
    """Join the node's group like an AgentConsumer and run ``script(layer, channel, request)``."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.node_group(TARGET.node_id), channel)

    async def serve():
        request = await layer.receive(channel)
        await script(layer, channel, request)

    return asyncio.create_task(serve())


async def reply(layer, request, kind, agent, **fields):
    await layer.send(request["reply_to"], {"type": kind, "request_id": request["request_id"], "agent": agent,
                                           **fields})


async def test_silence_ends_the_answer_with_an_error_within_offline_after(settings):
    settings.FLEET_OFFLINE_AFTER = 1

    async def accept_then_die(layer, channel, request):
        await reply(layer, request, "chat.accepted", channel)
        await reply(layer, request, "chat.delta", channel, text="half an ans")

    task = await node_connection(accept_then_die)
    relay = await open_chat([TARGET], CHAT)
    began = time.monotonic()
    seen = [event async for event in relay]
    assert [e["type"] for e in seen] == ["chat.delta", "chat.error"]
    assert "gpu-x stopped answering" in seen[-1]["error"]
    assert time.monotonic() - began < 1 + 1.0
    await relay.aclose()
    assert targets.inflight[TARGET.node_id] == 0
    task.cancel()


async def test_keepalives_hold_a_slow_answer_and_a_second_connection_is_ignored(settings):
    settings.FLEET_OFFLINE_AFTER = 1

    async def slow(layer, channel, request):
        await reply(layer, request, "chat.accepted", channel)
        for _ in range(8):  # 2 s of thinking, longer than the silence limit
            await asyncio.sleep(0.25)
            await reply(layer, request, "chat.alive", channel, quiet=0.1)
            await reply(layer, request, "chat.delta", "specific.other!connection", text="IMPOSTOR")
        await reply(layer, request, "chat.delta", channel, text="done thinking")
        await reply(layer, request, "chat.done", channel, finish_reason="stop", usage={"completion_tokens": 2})

    task = await node_connection(slow)
    relay = await open_chat([TARGET], CHAT)
    seen = [event async for event in relay]
    assert seen == [{"type": "chat.delta", "text": "done thinking"},
                    {"type": "chat.done", "finish_reason": "stop", "usage": {"completion_tokens": 2}}]
    await relay.aclose()
    task.cancel()


async def test_a_node_that_never_takes_the_request_is_refused_quickly(settings):
    settings.FLEET_OFFLINE_AFTER = 1
    began = time.monotonic()
    with pytest.raises(RelayError, match="gpu-x did not take the request"):
        await open_chat([TARGET], CHAT)
    assert time.monotonic() - began < 2 and targets.inflight[TARGET.node_id] == 0


@pytest.mark.django_db(transaction=True)
async def test_an_agent_gone_silent_mid_answer_ends_the_answer(settings, make_node):
    settings.FLEET_OFFLINE_AFTER = 1.5
    settings.FLEET_HEARTBEAT_INTERVAL = 0.3
    node, secret = await database_sync_to_async(make_node)("gpu-01")
    agent = await CommunicatorAgent(secret, reply=hold).start()
    found = await database_sync_to_async(targets.candidates)(REPO)
    relay = await open_chat(found, CHAT)
    events_ = relay.events()
    assert (await anext(events_))["type"] == "chat.delta"
    agent._loop.cancel()  # the agent stops reading and answering pings, its socket stays open
    began = time.monotonic()
    last = await anext(events_)
    assert last["type"] == "chat.error" and "gpu-01" in last["error"]
    assert time.monotonic() - began < 1.5 + 0.5  # from its last frame (a pong), not from its socket closing
    await relay.aclose()
    await agent.stop()


async def test_across_processes_on_the_redis_layer(services):
    """Two RedisChannelLayer instances stand for two server processes: the agent's connection on one,
    the requester on the other (a Daphne run of this took 75 s, so the suite checks the layer)."""
    import uuid

    from channels_redis.core import RedisChannelLayer

    from fleet.agent import protocol
    from fleet.agents.chat import AgentChats

    prefix = f"fleet-relay-{uuid.uuid4().hex[:8]}"
    agent_side = RedisChannelLayer(hosts=[services["redis"]], prefix=prefix, expiry=30)
    requester_side = RedisChannelLayer(hosts=[services["redis"]], prefix=prefix, expiry=30)
    channel = await agent_side.new_channel()
    await agent_side.group_add(events.node_group(TARGET.node_id), channel)
    sent: list[str] = []
    chats = AgentChats(agent_side, channel, "gpu-x", lambda text: _append(sent, text))

    async def connection():
        while True:
            message = await agent_side.receive(channel)
            if message["type"] == "agent.chat":
                await chats.request(message, ready=True)
            elif message["type"] == "agent.chat_cancel":
                await chats.cancel(message)

    task = asyncio.create_task(connection())
    try:
        relay = await open_chat([TARGET], CHAT, layer=requester_side)
        request_id = relay.request_id
        assert protocol.parse_server_frame(sent[0]).request_id == request_id
        await chats.frame(protocol.ChatDelta(type="chat.delta", request_id=request_id, text="over redis"))
        events_ = relay.events()
        assert await anext(events_) == {"type": "chat.delta", "text": "over redis"}
        await relay.cancel()  # straight to the agent connection's channel, across "processes"
        for _ in range(100):
            if len(sent) == 2:
                break
            await asyncio.sleep(0.05)
        assert protocol.parse_server_frame(sent[1]).type == "chat.cancel"
        await chats.frame(protocol.ChatDone(type="chat.done", request_id=request_id, finish_reason="cancelled"))
        assert (await anext(events_))["finish_reason"] == "cancelled"
        await relay.aclose()
    finally:
        task.cancel()
        await agent_side.flush()


async def _append(sent: list[str], text: str) -> None:
    sent.append(text)


@pytest.mark.django_db(transaction=True)
async def test_a_requester_that_stops_reading_gets_its_request_cancelled(make_node):
    node, secret = await database_sync_to_async(make_node)("gpu-01")
    agent = await CommunicatorAgent(secret, words=[f"w{i}" for i in range(300)]).start()  # > channel capacity
    found = await database_sync_to_async(targets.candidates)(REPO)
    relay = await open_chat(found, CHAT)  # ... and never read
    await asyncio.wait_for(agent.cancelled(relay.request_id).wait(), 10)
    relay.finished = True
    await relay.aclose()
    await agent.stop()

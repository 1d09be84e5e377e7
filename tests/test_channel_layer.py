"""The production channel layer (channels_redis) as settings configure it, against the real Redis."""

from __future__ import annotations

import asyncio
import uuid
import weakref

from channels_redis.core import RedisChannelLayer

from fleet.settings import _channel_layers


async def test_an_idle_channel_outlives_the_blocking_read(services, monkeypatch):
    # redis-py 8's default 5 s read timeout raced channels_redis's 5 s BZPOPMIN: an idle consumer died
    # with "Timeout reading from redis" (every agent and browser socket closed 1011 every few seconds).
    monkeypatch.setenv("REDIS_URL", services["redis"])
    monkeypatch.setenv("FLEET_CHANNEL_PREFIX", f"layer-test-{uuid.uuid4().hex[:6]}")
    config = _channel_layers()["default"]
    layer = RedisChannelLayer(**config["CONFIG"])
    channel = await layer.new_channel()

    async def later() -> None:
        await asyncio.sleep(layer.brpop_timeout + 2)
        await layer.send(channel, {"type": "hello"})

    sender = asyncio.create_task(later())
    try:
        message = await asyncio.wait_for(layer.receive(channel), layer.brpop_timeout + 10)
    finally:
        sender.cancel()
        await layer.flush()
    assert message == {"type": "hello"}


async def test_a_connect_storm_of_group_operations_fits_the_pool(services, monkeypatch):
    # Every agent connect sends to its node group and joins it; redis-py 8 pools stop at 100 connections
    # by default and raised MaxConnectionsError at the 101st concurrent operation.
    monkeypatch.setenv("REDIS_URL", services["redis"])
    monkeypatch.setenv("FLEET_CHANNEL_PREFIX", f"layer-test-{uuid.uuid4().hex[:6]}")
    layer = RedisChannelLayer(**_channel_layers()["default"]["CONFIG"])
    try:
        await asyncio.gather(*(layer.group_send(f"node.{i}", {"type": "agent.replace"}) for i in range(400)),
                             *(layer.group_add(f"node.{i}", f"specific.storm!{i}") for i in range(400)))
    finally:
        await layer.flush()


async def test_agent_group_operations_wait_for_a_slot_instead_of_exhausting_the_pool(services, monkeypatch, settings):
    """Past FLEET_REDIS_MAX_CONNECTIONS operations in flight, redis-py's pool raises (a browser socket's
    leave failed with it in a storm of 3,200 agents); agent connections join and leave through a quarter
    of the pool (fleet.agents.consumers.layer_slots) and the rest of a storm waits."""
    from redis.exceptions import MaxConnectionsError

    from fleet.agents import consumers

    monkeypatch.setenv("REDIS_URL", services["redis"])
    monkeypatch.setenv("FLEET_CHANNEL_PREFIX", f"layer-test-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("FLEET_REDIS_MAX_CONNECTIONS", "40")
    settings.CHANNEL_LAYERS = _channel_layers()
    monkeypatch.setattr(consumers, "_layer_slots", weakref.WeakKeyDictionary())
    layer = RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])

    async def join(i: int, gated: bool) -> None:
        async def ops() -> None:
            await layer.group_send(f"node.{i}", {"type": "agent.replace"})
            await layer.group_add(f"node.{i}", f"specific.storm!{i}")
        if gated:
            async with consumers.layer_slots():
                await ops()
        else:
            await ops()

    try:
        await asyncio.gather(*(join(i, gated=True) for i in range(600)))
        assert consumers.layer_slots()._value == 10  # every slot given back
        results = await asyncio.gather(*(join(i, gated=False) for i in range(600)), return_exceptions=True)
        assert any(isinstance(r, MaxConnectionsError) for r in results)  # what the slots prevent
    finally:
        await layer.flush()

"""The production channel layer (channels_redis) as settings configure it, against the real Redis."""

from __future__ import annotations

import asyncio
import uuid

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

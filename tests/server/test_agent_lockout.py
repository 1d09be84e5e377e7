"""One enrolled node must not be able to lock every agent out (issue 9, item 1).

Before the fix, a frame that made the consumer raise closed the socket with 1011 without
`disconnect()`, the per-process connection count leaked, and at FLEET_MAX_AGENT_CONNECTIONS every
handshake got the 403 of a revoked credential, on which fleet-agent gives up for good.
"""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from fleet.agents import consumers
from fleet.inventory.models import Node
from tests.server.test_agent_socket import agent, connect_and_hello, hello

pytestmark = pytest.mark.django_db(transaction=True)


async def drain_until_closed(comm, limit: int = 50) -> dict:
    for _ in range(limit):
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return output
    raise AssertionError("the socket was not closed")


async def test_a_raising_handler_gives_its_slot_back(make_node, settings, monkeypatch):
    settings.FLEET_MAX_AGENT_CONNECTIONS = 1
    node, secret = await database_sync_to_async(make_node)()

    async def explode(self, text_data=None, bytes_data=None):
        raise RuntimeError("a bug in a frame handler")

    monkeypatch.setattr(consumers.AgentConsumer, "receive", explode)
    comm = agent(secret)
    assert (await comm.connect())[0]
    assert consumers.open_connections() == 1
    await comm.send_json_to(hello())
    with pytest.raises(RuntimeError):
        await comm.receive_output(timeout=5)  # the application instance died with the exception
    assert consumers.open_connections() == 0
    monkeypatch.undo()

    again = await connect_and_hello(secret)  # the only slot is free again: welcomed, not refused
    await again.disconnect()
    assert consumers.open_connections() == 0


@pytest.mark.parametrize("field, host, gpu", [
    ("host.cpu_count", {"cpu_count": 10**30}, {}),
    ("host.memory_bytes", {"memory_bytes": 2**63}, {}),
    ("gpus.0.memory_total_bytes", {}, {"memory_total_bytes": 10**20}),
    ("host.hostname", {"hostname": "h" * 512}, {}),
])
async def test_an_out_of_range_hello_is_refused_by_field_and_stores_nothing(make_node, settings, field, host, gpu):
    settings.FLEET_MAX_AGENT_CONNECTIONS = 1
    node, secret = await database_sync_to_async(make_node)()
    frame = hello(gpus=1, **host)
    frame["gpus"][0].update(gpu)
    comm = agent(secret)
    assert (await comm.connect())[0]
    await comm.send_json_to(frame)
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["detail"].startswith(f"{field}:")
    fresh = await database_sync_to_async(Node.objects.get)(pk=node.pk)
    assert (fresh.cpu_count, fresh.agent_version, fresh.status) == (None, "", "never_seen")
    await comm.send_json_to(hello())  # the connection stays usable
    assert (await comm.receive_json_from(timeout=5))["type"] == "welcome"
    await comm.disconnect()
    assert consumers.open_connections() == 0


async def test_nan_in_a_catch_up_batch_is_refused_not_raised(make_node):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    await comm.send_to(text_data='{"type": "metrics.batch", "v": 1, "sent": NaN, "seq": 1, "points": [{"ts": 1}]}')
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["detail"].startswith("sent:")
    await comm.disconnect()


async def test_at_capacity_the_answer_is_try_again_later_not_refused(make_node, settings):
    settings.FLEET_MAX_AGENT_CONNECTIONS = 1
    (_, first_secret), (_, second_secret) = [await database_sync_to_async(make_node)(f"gpu-0{n}") for n in (1, 2)]
    first = await connect_and_hello(first_secret)
    second = agent(second_secret)
    connected, _ = await second.connect()
    assert connected  # not the handshake refusal (403) that means "credential revoked"
    assert await drain_until_closed(second) == {"type": "websocket.close", "code": 1013}
    assert consumers.open_connections() == 1
    await first.disconnect()
    assert consumers.open_connections() == 0
    other = hello()
    for gpu in other["gpus"]:
        gpu["uuid"] += "-b"  # its own GPUs: the first node's are still reported by an online node
    third = await connect_and_hello(second_secret, other)
    await third.disconnect()


async def test_a_gpu_uuid_of_another_online_node_is_refused(make_node):
    (first_node, first_secret), (second_node, second_secret) = [
        await database_sync_to_async(make_node)(f"gpu-0{n}") for n in (1, 2)]
    first = await connect_and_hello(first_secret)
    comm = agent(second_secret)
    assert (await comm.connect())[0]
    await comm.send_json_to(hello(gpus=2))
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["detail"].startswith("gpus.0.uuid:") and "gpu-01" in error["detail"]
    count = database_sync_to_async(lambda node: node.gpus.count())
    assert (await count(first_node), await count(second_node)) == (2, 0)
    await comm.disconnect()
    await first.disconnect()


def test_fresh_gpu_uuids_on_every_hello_do_not_grow_rows_forever(make_node):
    """10 hellos with 256 fresh UUIDs each left 11,528 GPU rows on one node ("11272 lost GPUs")."""
    from fleet.agent.protocol import parse_agent_frame
    from fleet.agents.presence import MAX_LOST_GPUS, record_hello

    node, _ = make_node()
    for round_ in range(10):
        frame = hello(gpus=256)
        for gpu in frame["gpus"]:
            gpu["uuid"] = f"GPU-{round_}-{gpu['index']}"
        record_hello(node.pk, parse_agent_frame(json.dumps(frame)))
    assert node.gpus.filter(state="present").count() == 256
    assert node.gpus.filter(state="lost").count() == MAX_LOST_GPUS


def test_lost_gpus_are_pruned_after_the_retention(make_node, settings):
    from datetime import timedelta

    from django.utils import timezone

    from fleet.agents.presence import prune_lost_gpus
    from fleet.inventory.models import Gpu

    node, _ = make_node()
    old = timezone.now() - timedelta(seconds=settings.FLEET_METRICS_RETENTION + 60)
    Gpu.objects.create(node=node, index=0, uuid="GPU-gone", name="x", state="lost", last_seen=old)
    Gpu.objects.create(node=node, index=1, uuid="GPU-recent", name="x", state="lost")
    Gpu.objects.create(node=node, index=2, uuid="GPU-here", name="x", last_seen=old)
    assert prune_lost_gpus() == 1
    assert sorted(node.gpus.values_list("uuid", flat=True)) == ["GPU-here", "GPU-recent"]


async def test_hellos_have_their_own_small_rate_limit(make_node):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    replies = []
    for _ in range(6):
        await comm.send_json_to(hello())
        replies.append(await comm.receive_json_from(timeout=5))
        while not await comm.receive_nothing(timeout=0.02):
            await comm.receive_output()
    kinds = [reply["type"] for reply in replies]
    assert kinds[:2] == ["welcome", "welcome"] and kinds[-1] == "error"
    assert replies[-1]["code"] == "rate_limited" and replies[-1]["detail"].startswith("type:")
    await comm.disconnect()

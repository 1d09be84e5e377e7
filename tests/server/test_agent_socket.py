"""The agent websocket: authentication before any frame, validation, size limit, replacement, hello upsert."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from fleet.asgi import application
from fleet.inventory.models import Gpu, GpuState, Node, NodeCredential, NodeStatus
from fleet.inventory.services import revoke_credential

pytestmark = pytest.mark.django_db(transaction=True)


def hello(gpus: int = 2, **host) -> dict:
    return {
        "type": "hello",
        "v": 1,
        "agent_version": "0.1.0",
        "host": {"hostname": "gpu-01.lan", "os": "Debian 12", "arch": "x86_64", "cpu_count": 64,
                 "memory_bytes": 512 << 30, "disk_bytes": 4 << 40, **host},
        "gpus": [
            {"index": i, "uuid": f"GPU-{i:08d}", "name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 80 << 30,
             "driver_version": "550.54.15", "cuda_version": "12.4", "mig_mode": False}
            for i in range(gpus)
        ],
    }


def agent(secret: str | None) -> WebsocketCommunicator:
    headers = [(b"authorization", f"Bearer {secret}".encode())] if secret else []
    return WebsocketCommunicator(application, "/ws/agent/", headers=headers)


async def connect_and_hello(secret: str, frame: dict | None = None) -> WebsocketCommunicator:
    comm = agent(secret)
    connected, _ = await comm.connect()
    assert connected
    await comm.send_json_to(frame or hello())
    welcome = await comm.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    return comm


@pytest.mark.parametrize("secret", [None, "fns_not-a-real-secret"])
async def test_unknown_or_missing_secret_is_refused_at_handshake(secret):
    comm = agent(secret)
    connected, _ = await comm.connect()
    assert connected is False


async def test_revoked_secret_is_refused(make_node):
    node, secret = await database_sync_to_async(make_node)()
    credential = await database_sync_to_async(NodeCredential.objects.get)(node=node)
    await database_sync_to_async(revoke_credential)("test", credential)
    connected, _ = await agent(secret).connect()
    assert connected is False
    assert (await database_sync_to_async(Node.objects.get)(pk=node.pk)).status == NodeStatus.REVOKED


async def test_hello_upserts_facts_and_gpus_and_goes_online(make_node):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    fresh = await database_sync_to_async(Node.objects.get)(pk=node.pk)
    assert fresh.status == NodeStatus.ONLINE
    assert (fresh.os, fresh.cpu_count, fresh.agent_version) == ("Debian 12", 64, "0.1.0")
    assert await database_sync_to_async(fresh.gpus.count)() == 2
    await comm.disconnect()


async def test_vanished_gpu_is_marked_lost_not_deleted(make_node):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret, hello(gpus=4))
    await comm.send_json_to(hello(gpus=3))  # GPU 3 is gone on the next hello
    assert (await comm.receive_json_from(timeout=5))["type"] == "welcome"
    gpus = await database_sync_to_async(lambda: {g.uuid: g.state for g in Gpu.objects.filter(node=node)})()
    assert len(gpus) == 4
    assert gpus["GPU-00000003"] == GpuState.LOST
    assert [s for u, s in gpus.items() if u != "GPU-00000003"] == [GpuState.PRESENT] * 3
    await comm.disconnect()


async def test_malformed_frame_gets_error_naming_the_field_and_connection_stays(make_node):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    bad = hello()
    del bad["gpus"][1]["uuid"]
    await comm.send_json_to(bad)
    error = await comm.receive_json_from(timeout=5)
    assert error == {"type": "error", "v": 1, "code": "invalid_frame", "detail": "gpus.1.uuid: Field required"}
    await comm.send_to(text_data="{not json")
    assert (await comm.receive_json_from(timeout=5))["code"] == "invalid_json"
    # Still open and still served: a valid hello is answered.
    await comm.send_json_to(hello())
    assert (await comm.receive_json_from(timeout=5))["type"] == "welcome"
    await comm.disconnect()


async def test_first_frame_must_be_hello(make_node):
    _, secret = await database_sync_to_async(make_node)()
    comm = agent(secret)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "pong", "v": 1})
    error = await comm.receive_json_from(timeout=5)
    assert (error["code"], error["detail"]) == ("hello_required", "type: the first frame must be 'hello'")
    await comm.disconnect()


async def test_two_mib_frame_is_refused(make_node):
    _, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    big = hello()
    big["gpu_note"] = "x" * (2 * 1024 * 1024)
    await comm.send_to(text_data=json.dumps(big))
    error = await comm.receive_json_from(timeout=5)
    assert error["code"] == "frame_too_large"
    closed = await comm.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 1009}


async def test_newer_connection_replaces_older(make_node):
    node, secret = await database_sync_to_async(make_node)()
    first = await connect_and_hello(secret)
    second = await connect_and_hello(secret)
    closed = await first.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4409}
    # The newer connection keeps working and the node never went offline.
    await second.send_json_to(hello())
    assert (await second.receive_json_from(timeout=5))["type"] == "welcome"
    assert (await database_sync_to_async(Node.objects.get)(pk=node.pk)).status == NodeStatus.ONLINE
    await second.disconnect()


async def test_revoking_closes_the_live_connection(make_node):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    credential = await database_sync_to_async(NodeCredential.objects.get)(node=node)
    await database_sync_to_async(revoke_credential)("test", credential)
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_error_flood_closes_the_connection(make_node):
    _, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    for _ in range(21):
        await comm.send_to(text_data="[]")
        assert (await comm.receive_json_from(timeout=5))["type"] == "error"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4429}


async def test_rotation_closes_only_the_connection_of_the_old_secret(make_node):
    from fleet.inventory.services import rotate_credential

    node, secret = await database_sync_to_async(make_node)()
    old = await connect_and_hello(secret)
    credential = await database_sync_to_async(NodeCredential.objects.get)(node=node)
    new_secret = await database_sync_to_async(rotate_credential)(credential)
    assert await old.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
    new = await connect_and_hello(new_secret)
    await database_sync_to_async(revoke_credential)("test", credential)  # already revoked: no-op
    assert await new.receive_nothing(timeout=0.5)
    await new.disconnect()


@pytest.mark.parametrize("compact", [False, True])
async def test_the_compact_metrics_encoding_is_offered_only_when_enabled(make_node, settings, compact):
    from fleet.agent.protocol import GpuSample, Metrics, dump_metrics
    from fleet.telemetry.live import live_telemetry

    settings.FLEET_COMPACT_METRICS = compact
    node, secret = await database_sync_to_async(make_node)()
    comm = agent(secret)
    assert (await comm.connect())[0]
    await comm.send_json_to(hello())
    welcome = await comm.receive_json_from(timeout=5)
    assert welcome.get("protocols") == ([1, 2] if compact else None)
    frame = Metrics(type="metrics", ts=1.0, gpus=[GpuSample(index=0, uuid="GPU-00000000", utilization_gpu=42.5)])
    text = dump_metrics(frame, welcome.get("protocols"))
    assert ('"v":2' in text) is compact
    await comm.send_to(text_data=text)
    await comm.receive_nothing(timeout=0.3)  # no error frame
    live = live_telemetry.nodes[node.pk]
    assert live.latest_json() and '"utilization_gpu":42.5' in live.latest_json()
    await comm.disconnect()

"""`/ws/live/` telemetry topics: coalesced (at most one message a second), only what was subscribed,
stopped by unsubscribing (a hidden tab), permission-checked."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async

from fleet.agent.protocol import Metrics
from fleet.telemetry.live import hub
from tests.server.test_live_socket import live
from tests.telemetry.conftest import gpu, metrics_frame

pytestmark = pytest.mark.django_db(transaction=True)


def feed(node_id: int, util: float) -> None:
    hub.ingest(node_id, Metrics.model_validate(metrics_frame(time.time(), [gpu(0, utilization_gpu=util), gpu(1)])))


async def subscribe(comm, *topics: str, action: str = "subscribe") -> dict:
    await comm.send_json_to({"type": action, "topics": list(topics)})
    while True:
        message = await comm.receive_json_from(timeout=5)
        if message["kind"] in {"subscribed", "error"}:
            return message


async def next_telemetry(comm, timeout: float = 3) -> dict:
    while True:
        message = await comm.receive_json_from(timeout=timeout)
        if message["kind"] == "telemetry":
            return message


async def test_node_topic_streams_coalesced_updates(make_node, charlie):
    node, _ = await database_sync_to_async(make_node)("a")
    other, _ = await database_sync_to_async(make_node)("b")
    comm = await live(charlie)
    assert (await comm.connect())[0]
    reply = await subscribe(comm, f"telemetry:node:{node.pk}")
    assert reply == {"kind": "subscribed", "topics": [f"telemetry:node:{node.pk}"]}
    feed(node.pk, 10.0)
    feed(other.pk, 99.0)  # not subscribed: never sent
    first = await next_telemetry(comm)
    assert list(first["nodes"]) == [str(node.pk)]
    assert first["nodes"][str(node.pk)]["latest"]["gpus"][0]["utilization_gpu"] == 10.0
    assert len(first["nodes"][str(node.pk)]["points"]) == 1

    # Frames at 10 Hz for 4 s: coalesced to about one message a second, every point delivered once.
    messages, fed = [], []
    for step in range(40):
        util = float(step)
        feed(node.pk, util)
        fed.append(util)
        await asyncio.sleep(0.1)
        while not comm.output_queue.empty():
            message = await comm.receive_json_from()
            if message["kind"] == "telemetry":
                messages.append(message)
    await asyncio.sleep(1.2)
    while not comm.output_queue.empty():
        messages.append(await comm.receive_json_from())
    sent = [first["sent"]] + [m["sent"] for m in messages]
    assert 3 <= len(messages) <= 5, sent  # 4 s at most 1/s, plus the bucket's half-message of slack
    assert all(b - a >= 0.5 for a, b in zip(sent, sent[1:], strict=False)), sent
    delivered = [p[1][0][1] for m in messages for p in m["nodes"][str(node.pk)]["points"]]
    assert delivered == fed
    assert messages[-1]["nodes"][str(node.pk)]["latest"]["gpus"][0]["utilization_gpu"] == 39.0
    assert await comm.receive_nothing(timeout=1.5)  # nothing new: nothing sent

    # A hidden tab unsubscribes: the stream stops.
    await subscribe(comm, f"telemetry:node:{node.pk}", action="unsubscribe")
    feed(node.pk, 70.0)
    assert await comm.receive_nothing(timeout=1.5)
    await comm.disconnect()


async def test_fleet_topic_sends_the_heatmap_cells(make_node, charlie):
    node, _ = await database_sync_to_async(make_node)("a")
    comm = await live(charlie)
    assert (await comm.connect())[0]
    await subscribe(comm, "telemetry:fleet")
    feed(node.pk, 77.0)
    message = await next_telemetry(comm)
    cells = message["heat"][str(node.pk)]
    assert cells[0][:2] == [0, 77.0] and cells[0][3] == 60.0 and cells[0][4] == 0
    assert json.dumps(message).count('"heat"') == 1
    await comm.disconnect()


async def test_bad_or_forbidden_telemetry_topics_are_refused(charlie):
    comm = await live(charlie)
    assert (await comm.connect())[0]
    error = await subscribe(comm, "telemetry:node:abc")
    assert error == {"kind": "error", "detail": "topics.0: unknown or not permitted: 'telemetry:node:abc'"}
    await comm.disconnect()

"""Acceptance (issue 11): an agent at 10× its allowed frame rate for 10 s leaves the server's memory within a
bound, and a well-behaved agent's updates keep reaching a browser subscribed to its node. Real consumers
(AgentConsumer, the live socket) through channels' WebsocketCommunicator; memory by tracemalloc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tracemalloc

import pytest
from channels.db import database_sync_to_async

from fleet.telemetry.live import live_telemetry
from tests.server.test_agent_socket import connect_and_hello, hello
from tests.server.test_live_socket import live
from tests.telemetry.conftest import gpu, metrics_frame

pytestmark = pytest.mark.django_db(transaction=True)

ALLOWED = 20.0  # frames per second an agent may send (FLEET_AGENT_MAX_FRAMES_PER_SECOND, lowered here)
FLOOD_SECONDS = 10.0
MEMORY_BOUND = 4 << 20  # the flood is 2,000 frames of ~3 KB (6 MB): it must not pile up


def node_hello(name: str) -> dict:
    frame = hello(gpus=8)
    for entry in frame["gpus"]:
        entry["uuid"] = f"GPU-{name}-{entry['index']}"
    return frame


def frame_of(name: str, util: float) -> dict:
    return metrics_frame(time.time(), [gpu(g, uuid=f"GPU-{name}-{g}", utilization_gpu=util) for g in range(8)])


async def flood(secret: str, stop: asyncio.Event) -> dict[str, int]:
    """Metrics frames at 10× ALLOWED; reconnects (as the agent does) when the server closes it for flooding.
    Stops when told, or on its own a little after FLOOD_SECONDS (a starved event loop must not keep it going)."""
    text = json.dumps(frame_of("noisy", 99.0))
    sent = connects = 0
    comm = await connect_and_hello(secret, node_hello("noisy"))
    step = 1 / (10 * ALLOWED)
    next_at = time.monotonic()
    deadline = next_at + FLOOD_SECONDS + 5
    while not stop.is_set() and time.monotonic() < deadline:
        await comm.send_to(text_data=text)
        sent += 1
        closed = False
        while not comm.output_queue.empty():  # errors and pings the agent would read (all of them: an
            message = await comm.receive_output()  # `or` that skipped the read once closed spun forever)
            closed = closed or message["type"] == "websocket.close"
        if closed:  # the server closed it for flooding: the agent reconnects
            await comm.disconnect()
            connects += 1
            comm = await connect_and_hello(secret, node_hello("noisy"))
        next_at += step
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    with contextlib.suppress(Exception):
        await comm.disconnect()
    return {"sent": sent, "reconnects": connects}


async def steady(secret: str, stop: asyncio.Event) -> list[float]:
    """One 8-GPU frame a second, each with the next utilization value."""
    comm = await connect_and_hello(secret, node_hello("good"))
    fed: list[float] = []
    deadline = time.monotonic() + FLOOD_SECONDS + 5
    while not stop.is_set() and time.monotonic() < deadline:
        util = float(len(fed) % 100)
        await comm.send_json_to(frame_of("good", util))
        fed.append(util)
        await asyncio.sleep(1.0)
    await comm.disconnect()
    return fed


async def test_a_flooding_agent_keeps_memory_bounded_and_others_updates_flowing(make_node, charlie, settings):
    settings.FLEET_AGENT_MAX_FRAMES_PER_SECOND = ALLOWED
    settings.FLEET_METRICS_INTERVAL = 1.0
    settings.FLEET_HEARTBEAT_INTERVAL = 600
    noisy, noisy_secret = await database_sync_to_async(make_node)("noisy")
    good, good_secret = await database_sync_to_async(make_node)("good")
    browser = await live(charlie)
    assert (await browser.connect())[0]
    await browser.send_json_to({"type": "subscribe", "topics": [f"telemetry:node:{good.pk}"]})
    assert (await browser.receive_json_from(timeout=5))["kind"] == "subscribed"

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        peak, stop = 0, asyncio.Event()
        flooder = asyncio.create_task(flood(noisy_secret, stop))
        well_behaved = asyncio.create_task(steady(good_secret, stop))
        received: list[tuple[float, list[float]]] = []  # (when, utilization values of the good node's new points)
        started = time.monotonic()
        while time.monotonic() - started < FLOOD_SECONDS:
            peak = max(peak, tracemalloc.get_traced_memory()[0] - baseline)
            while not browser.output_queue.empty():  # (a receive timeout would cancel the socket)
                message = await browser.receive_json_from()
                entry = message.get("nodes", {}).get(str(good.pk)) if message["kind"] == "telemetry" else None
                if entry:
                    received.append((time.monotonic() - started, [p[1][0][1] for p in entry["points"]]))
            await asyncio.sleep(0.1)
        stop.set()
        flooded, fed = await asyncio.wait_for(asyncio.gather(flooder, well_behaved), 60)
        peak = max(peak, tracemalloc.get_traced_memory()[0] - baseline)
    finally:
        tracemalloc.stop()
    await browser.disconnect()

    print(f"flood: {flooded}; good frames {len(fed)}; browser updates {len(received)}; peak +{peak / 1024:.0f} KiB")
    assert flooded["sent"] >= 5 * ALLOWED * FLOOD_SECONDS  # the flood really ran well over the budget
    assert live_telemetry.counters["dropped"] >= flooded["sent"] / 2
    assert peak <= MEMORY_BOUND, peak
    # The good agent's updates kept arriving all along: in every third of the flood, and in order.
    for third in range(3):
        low, high = third * FLOOD_SECONDS / 3, (third + 1) * FLOOD_SECONDS / 3
        assert any(low <= at < high for at, _ in received), (third, [at for at, _ in received])
    delivered = [util for _, utils in received for util in utils]
    assert delivered == fed[:len(delivered)] and len(delivered) >= len(fed) - 3, (delivered, fed)

"""Metrics through the real AgentConsumer: no DB write per frame, bad frames refused, caps, shedding."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from channels.db import database_sync_to_async
from django.db.backends import utils as db_utils

from fleet.telemetry import flusher
from fleet.telemetry.live import live_telemetry
from tests.server.test_agent_socket import connect_and_hello, hello
from tests.telemetry.conftest import gpu, metrics_frame

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast(settings):
    settings.FLEET_METRICS_INTERVAL = 1e-6  # the per-agent metrics cap follows the interval
    settings.FLEET_HEARTBEAT_INTERVAL = 600  # last_seen written on hello only, within this test
    return settings


@pytest.fixture
def sql_counter(monkeypatch):
    """Counts every SQL statement in every thread (consumers reach the DB from worker threads)."""
    counted: list[str] = []
    lock = threading.Lock()
    original = db_utils.CursorWrapper._execute

    def execute(self, sql, params, *args):
        with lock:
            counted.append(sql)
        return original(self, sql, params, *args)

    monkeypatch.setattr(db_utils.CursorWrapper, "_execute", execute)
    return counted


async def test_hundred_frames_make_no_database_writes(make_node, fast, sql_counter):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    await comm.send_json_to(metrics_frame(999.0, [gpu(g) for g in range(8)]))
    await asyncio.sleep(0.5)  # let what follows a hello (its own queries) settle first
    sql_counter.clear()
    for i in range(100):
        await comm.send_json_to(metrics_frame(1000.0 + i, [gpu(g, utilization_gpu=float(i % 100)) for g in range(8)]))
    for _ in range(50):  # let the consumer drain its queue
        if live_telemetry.counters["frames"] == 101:
            break
        await asyncio.sleep(0.1)
    assert comm.output_queue.empty()  # no error frames
    assert live_telemetry.nodes[node.pk].seq == 101 and live_telemetry.counters["frames"] == 101
    assert len(live_telemetry.nodes[node.pk].window) == 101
    writes = [sql for sql in sql_counter if not sql.lstrip().upper().startswith("SELECT")]
    assert writes == [], writes  # not one write for 100 frames
    assert len(sql_counter) <= 2, sql_counter  # at most a timer's read (e.g. a command poll), never per frame
    await comm.disconnect()


async def test_pongs_make_no_query_per_agent_only_the_flushers_bulk_write(make_node, settings, sql_counter):
    settings.FLEET_HEARTBEAT_INTERVAL = 0.05  # last_seen due all the time
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    await asyncio.sleep(0.3)  # what follows a hello (its own queries) settles first
    sql_counter.clear()
    for nonce in range(20):
        await comm.send_json_to({"type": "pong", "nonce": str(nonce)})
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # at least one flusher pass (the server's pings pile up unread meanwhile)
    updates = [sql for sql in sql_counter if sql.lstrip().upper().startswith("UPDATE")]
    per_agent = [sql for sql in updates if '"inventory_node"."id" = ' in sql]
    assert per_agent == [], per_agent  # was an UPDATE of this one node per heartbeat
    assert any('"last_seen"' in sql and '"inventory_node"."id" IN (' in sql for sql in updates), updates
    await comm.disconnect()


async def test_malformed_metrics_frame_gets_an_error_and_keeps_the_stored_frame(make_node, fast):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    await comm.send_json_to(metrics_frame(1.0, [gpu(0, utilization_gpu=42.0)]))
    await comm.send_json_to(metrics_frame(2.0, [gpu(0, utilization_gpu=150.0)]))  # > 100 %
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "invalid_frame"
    assert error["detail"].startswith("gpus.0.utilization_gpu:"), error
    await comm.send_to(text_data='{"type": "metrics", "v": 1, "ts": "soon"}')
    assert (await comm.receive_json_from(timeout=5))["detail"].startswith("ts:")
    live = live_telemetry.nodes[node.pk]
    assert live.seq == 1 and json.loads(live.latest_json())["gpus"][0]["utilization_gpu"] == 42.0
    assert len(live.window) == 1
    await comm.disconnect()


async def test_oversized_metrics_frame_is_refused_without_closing(make_node, fast):
    fast.FLEET_MAX_METRICS_FRAME_BYTES = 2048
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    processes = [{"pid": p, "used_memory_bytes": 1 << 20, "name": "python3"} for p in range(60)]
    await comm.send_json_to(metrics_frame(1.0, [gpu(0, processes=processes)]))
    error = await comm.receive_json_from(timeout=5)
    assert error["code"] == "metrics_too_large" and "FLEET_MAX_METRICS_FRAME_BYTES" in error["detail"]
    await comm.send_json_to(metrics_frame(2.0, [gpu(0)]))
    await asyncio.sleep(0.2)
    assert live_telemetry.nodes[node.pk].seq == 1 and live_telemetry.counters["rejected"] == 1
    await comm.disconnect()


async def test_an_agent_over_its_metrics_rate_is_dropped_then_closed_when_flooding(make_node, settings):
    settings.FLEET_METRICS_INTERVAL = 1.0
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    for i in range(300):
        await comm.send_json_to(metrics_frame(float(i), [gpu(0)]))
    close = None
    for _ in range(400):
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            close = output
            break
    assert close == {"type": "websocket.close", "code": 4429}
    assert live_telemetry.nodes[node.pk].seq <= 10  # a burst of 5, then about 2 per second
    assert live_telemetry.counters["dropped"] > 200


async def test_load_shedding_tells_agents_a_longer_interval(make_node, fast):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    shed = flusher.get_shedder()
    shed.level = 2  # as if the flusher had seen the event loop fall behind
    await comm.send_json_to(metrics_frame(1.0, [gpu(0)]))
    control = await comm.receive_json_from(timeout=5)
    assert control == {"type": "control", "v": 1, "metrics_interval": pytest.approx(4e-6),
                       "reason": "server under load"}
    shed.level = 0
    await comm.send_json_to(metrics_frame(2.0, [gpu(0)]))
    assert (await comm.receive_json_from(timeout=5))["metrics_interval"] == pytest.approx(1e-6)
    await comm.disconnect()


def test_shedder_raises_and_lowers_the_level():
    from fleet.telemetry.limits import Shedder

    shed = Shedder(threshold=0.5)
    assert not shed.observe(1.0, now=100) and shed.observe(1.0, now=100.5)
    assert shed.level == 1 and shed.interval(1.0) == 2.0
    assert not shed.observe(0.0, now=110) and shed.observe(0.0, now=141)
    assert shed.level == 0


def test_shedder_counts_connections_falling_behind_not_one_flooding_agent():
    from fleet.telemetry.limits import BACKLOG_FRAMES, Shedder

    shed = Shedder(threshold=0.5)
    for tick in range(10):  # one agent keeps its own queue full: nobody else is slowed
        shed.backlog(1, 100)
        assert not shed.observe(0.0, now=100 + tick, connections=200)
    assert shed.level == 0 and shed.last_behind == 1
    for tick in range(2):  # four connections of 200 behind, twice: the 2% share (and at least 5) is not met
        for connection in range(4):
            shed.backlog(connection, BACKLOG_FRAMES + 1)
        shed.backlog(99, BACKLOG_FRAMES)  # at the limit: not behind
        assert not shed.observe(0.0, now=120 + tick, connections=200)
    for tick in range(2):  # five behind, two ticks in a row: the level rises though the loop never lagged
        for connection in range(5):
            shed.backlog(connection, BACKLOG_FRAMES + 1)
        changed = shed.observe(0.0, now=130 + tick, connections=200)
    assert changed and shed.level == 1 and shed.behind == set()


async def test_frames_waiting_in_many_connections_tell_every_agent_a_longer_interval(make_node, fast):
    """The process falls behind without its loop lagging (offered twice what it can take, each turn of the
    loop stays short while Daphne's queues grow): the queues say so, and the agents are told to slow down."""
    fast.FLEET_AGENT_MAX_FRAMES_PER_SECOND = 10_000
    comms = []
    for i in range(5):
        _, secret = await database_sync_to_async(make_node)(f"gpu-{i:02d}")
        comms.append(await connect_and_hello(secret, hello(gpus=0)))  # GPU uuids are unique fleet-wide
    assert flusher.get_shedder().level == 0
    controls: list[dict] = []
    for burst in range(40):  # 12 frames land in each queue at once, every 0.1 s, for up to 4 s
        for comm in comms:
            for k in range(12):
                frame = metrics_frame(burst * 12 + k + 1.0, [gpu(0)])
                comm.input_queue.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})
        await asyncio.sleep(0.1)
        for comm in comms:
            while not comm.output_queue.empty():
                output = json.loads((await comm.receive_output())["text"])
                if output["type"] == "control":
                    controls.append(output)
        if len(controls) == len(comms):
            break
    assert flusher.get_shedder().level >= 1
    assert [c["reason"] for c in controls] == ["server under load"] * len(comms)
    assert all(c["metrics_interval"] == pytest.approx(2e-6) for c in controls)
    for comm in comms:
        await comm.disconnect()


def test_frame_gate_drops_over_budget_before_parsing_and_flags_a_flood():
    from fleet.telemetry.limits import FLOOD_CLOSE_DROPS, FrameGate

    gate = FrameGate(rate=10, burst=20)
    t = gate.frames.stamp
    assert sum(gate.allow(now=t) for _ in range(50)) == 20  # the burst, then drops
    assert gate.allow(now=t + 0.5)  # refilled at 10 frames/s
    assert not gate.flooding
    for _ in range(FLOOD_CLOSE_DROPS):
        gate.allow(now=t + 0.5)
    assert gate.flooding


async def test_a_flooding_agent_is_closed_by_the_pre_parse_budget(make_node, settings):
    settings.FLEET_AGENT_MAX_FRAMES_PER_SECOND = 5
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    for _ in range(400):
        await comm.send_to(text_data="not even json")  # never parsed: no error frames for dropped ones
    close = None
    for _ in range(100):
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            close = output
            break
    assert close == {"type": "websocket.close", "code": 4429}
    assert live_telemetry.counters["dropped"] > 200

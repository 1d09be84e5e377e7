"""Property test: no agent frame, however extreme, can raise inside the agent consumer, leak its
connection slot, or spoil another node's telemetry (issue 9, Acceptance; DESIGN §3)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.agents import consumers
from fleet.telemetry import records
from fleet.telemetry.live import live_telemetry
from tests.server.test_agent_socket import connect_and_hello

pytestmark = pytest.mark.django_db(transaction=True)

FIELD = re.compile(r"^[\w\[\].?-]+: ")  # "gpus.3.uuid: ...", "host.labels.[a?b]: ..."
TOP_FIELDS = {"frame", "type", "v", "agent_version", "host", "gpus", "gpu_note", "runtimes", "installed",
              "active", "in_flight", "serving", "ts", "sent", "seq", "points", "command_id", "state",
              "bytes_done", "bytes_total", "error", "detail", "request_id", "text", "finish_reason", "usage",
              "nonce"}

EXTREME_INTS = st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, 2**64, 10**20, 10**30, -(10**30)])
INTS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), EXTREME_INTS)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf,
                                                                                      1e308, -0.0]))
NUMBERS = st.one_of(INTS, FLOATS, st.none())
ODD_TEXT = st.sampled_from(["", "\x00", "a\x00b", "\ud800", "h" * 513, "x" * 5000, "é" * 300, "GPU-0", "null",
                            "💥" * 100, "\n\t\r", "'; DROP TABLE inventory_node; --"])
TEXT = st.one_of(st.text(max_size=80), ODD_TEXT)
VALUE = st.one_of(NUMBERS, TEXT, st.booleans(), st.lists(st.integers(), max_size=3))


def gpu_info(uuid: str, index: int) -> st.SearchStrategy:
    return st.fixed_dictionaries({"index": st.one_of(st.just(index), INTS), "uuid": st.one_of(st.just(uuid), TEXT),
                                  "name": TEXT},
                                 optional={"memory_total_bytes": NUMBERS, "driver_version": TEXT,
                                           "cuda_version": TEXT, "mig_mode": VALUE})


def gpu_sample(uuid: str, index: int) -> st.SearchStrategy:
    return st.fixed_dictionaries({"index": st.one_of(st.just(index), INTS), "uuid": st.one_of(st.just(uuid), TEXT)},
                                 optional={key: NUMBERS for key in (
                                     "utilization_gpu", "utilization_memory", "memory_used_bytes",
                                     "memory_total_bytes", "temperature_c", "power_w", "power_limit_w",
                                     "sm_clock_mhz", "mem_clock_mhz", "fan_percent", "energy_j", "ecc_corrected",
                                     "ecc_uncorrected")} | {"lost": VALUE, "xids": st.lists(INTS, max_size=80)})


def many(strategy_for, prefix: str) -> st.SearchStrategy:
    """A few generated GPUs, or thousands of plain ones."""
    return st.one_of(
        st.lists(st.integers(0, 7), max_size=4).flatmap(
            lambda ns: st.tuples(*[strategy_for(f"{prefix}-{i}-{n}", i) for i, n in enumerate(ns)]).map(list)),
        st.integers(200, 3000).map(lambda n: [{"index": i % 1024, "uuid": f"{prefix}-x{i}", "name": "g"}
                                              for i in range(n)]),
    )


HOST = st.fixed_dictionaries({"hostname": TEXT}, optional={
    "os": TEXT, "arch": TEXT, "cpu_count": NUMBERS, "memory_bytes": NUMBERS, "disk_bytes": NUMBERS,
    "kind": st.sampled_from(["gpu_server", "edge_device", "toaster"]),
    "labels": st.one_of(st.dictionaries(TEXT, TEXT, max_size=5),
                        st.integers(60, 2000).map(lambda n: {f"k{i}": "v" for i in range(n)}))})

HELLO = st.fixed_dictionaries({"type": st.just("hello"), "agent_version": TEXT, "host": HOST,
                               "gpus": many(gpu_info, "GPU-H")},
                              optional={"gpu_note": TEXT, "v": st.sampled_from([1, 2, "1", None])})
METRICS = st.fixed_dictionaries({"type": st.just("metrics"), "ts": st.one_of(FLOATS, st.just(time.time())),
                                 "gpus": many(gpu_sample, "GPU-H")},
                                optional={"host": st.fixed_dictionaries({}, optional={
                                    "cpu_percent": NUMBERS, "memory_used_bytes": NUMBERS})})
BATCH = st.fixed_dictionaries({"type": st.just("metrics.batch"), "sent": st.one_of(FLOATS, st.just(time.time())),
                               "points": st.lists(st.fixed_dictionaries({"ts": FLOATS, "gpus": many(gpu_sample, "G")}),
                                                  max_size=3)}, optional={"seq": INTS})
EVENT = st.fixed_dictionaries({"type": st.just("event"), "command_id": TEXT, "state": TEXT},
                              optional={"bytes_done": NUMBERS, "bytes_total": NUMBERS, "error": TEXT})
OTHER = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["chat.delta", "chat.done", "chat.error", "runtime", "pong",
                                                    "nonsense", "welcome"])},
                          optional={"request_id": TEXT, "text": TEXT, "usage": st.dictionaries(TEXT, INTS, max_size=3),
                                    "serving": st.lists(st.dictionaries(TEXT, VALUE, max_size=4), max_size=3)}),
    st.dictionaries(TEXT, VALUE, max_size=4),
)
FRAME = st.one_of(HELLO, METRICS, BATCH, EVENT, OTHER)
RAW = st.sampled_from(['{"type": "metrics", "ts": NaN}', '{"type": "hello"', "[" * 5000 + "]" * 5000, "null",
                       '"just a string"', '{"type": ["hello"]}', '{"type": {"a": 1}}'])


def encode(frame) -> str:
    return frame if isinstance(frame, str) else json.dumps(frame, allow_nan=True)  # NaN/Infinity on the wire


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def drain(comm) -> list[dict]:
    replies = []
    while not await comm.receive_nothing(timeout=0.02):
        output = await comm.receive_output(timeout=2)  # raises if the consumer died
        if output["type"] == "websocket.close":
            replies.append({"closed": output.get("code")})
            break
        replies.append(json.loads(output["text"]))
    return replies


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.one_of(FRAME, RAW), min_size=1, max_size=4))
def test_no_frame_can_raise_leak_a_slot_or_spoil_another_node(frames, nodes):
    (hostile, hostile_secret), (healthy, _) = nodes

    async def scenario():
        comm = await connect_and_hello(hostile_secret)
        await drain(comm)
        for frame in frames:
            await comm.send_to(text_data=encode(frame))
            for reply in await drain(comm):
                if reply.get("type") == "error":
                    detail = reply["detail"]
                    assert FIELD.match(detail), detail
                    assert re.split(r"[.\[:]", detail)[0] in TOP_FIELDS, detail
                    assert len(detail) <= 512
                else:
                    assert "closed" in reply or reply["type"] in {"welcome", "ack", "control", "deploy"}, reply
        await comm.disconnect()
        await asyncio.sleep(0)

    async_to_sync(scenario)()
    assert consumers.open_connections() == 0
    # The other node's telemetry still reads as strict JSON, and the minute's rollups can be written.
    for live in live_telemetry.nodes.values():
        if live.latest is not None:
            strict_json(live.latest_json())
            strict_json(json.dumps(live.heat(), allow_nan=False))
        strict_json(live_telemetry.window_json(live.node_id))
    live_telemetry._stale_due = 0.0  # finish every open minute now, whatever the last scan
    live_telemetry.finish_stale(time.time() + 600, grace=0)
    rollups, _ = live_telemetry.take()
    records.write_rollups(rollups)  # one bad row would fail the whole bulk insert for every node
    assert any(row["node_id"] == healthy.pk for row in rollups)
    feed_healthy(healthy.pk)


def feed_healthy(node_id: int) -> None:
    """The healthy node's frame for the next example (its minute is written by the example after)."""
    from fleet.agent.protocol import parse_agent_frame

    frame = parse_agent_frame(json.dumps({"type": "metrics", "ts": time.time(), "gpus": [
        {"index": 0, "uuid": "GPU-healthy", "utilization_gpu": 50.0, "memory_used_bytes": 1 << 30,
         "memory_total_bytes": 80 << 30, "temperature_c": 60.0, "power_w": 300.0}]}))
    live_telemetry.ingest(node_id, frame)


@pytest.fixture
def nodes(make_node):
    pair = make_node("hostile"), make_node("healthy")
    live_telemetry.reset()
    feed_healthy(pair[1][0].pk)
    yield pair
    live_telemetry.reset()


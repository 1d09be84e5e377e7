"""Protocol v2's compact metrics and the one-pass parse: the same Metrics as v1, the same refusals as the
slow path, field-named errors, and nothing but FrameError whatever an agent sends."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.agent import protocol
from fleet.agent.collectors.simulated import SimulatedCollector
from fleet.agent.protocol import (
    MAX_FRAME_BYTES,
    FrameError,
    GpuProcess,
    GpuSample,
    HostSample,
    Metrics,
    Welcome,
    dump,
    dump_compact,
    dump_metrics,
    parse_agent_frame,
    parse_server_frame,
)
from fleet.agent.protocol_compact import COLUMNS, GpuColumns
from tests.agent.test_connection import FakeServer, fast_backoff, start  # noqa: F401 - fast_backoff: autouse

FIELD = re.compile(r"^[\w\[\].?-]+: ")


def simulated(ts: float = 1_764_489_600.25) -> Metrics:
    sim = SimulatedCollector("h100x8", "compact")
    return Metrics(type="metrics", ts=ts, gpus=sim.sample(time.time()),
                   host=HostSample(cpu_percent=12.5, memory_used_bytes=1 << 30, memory_total_bytes=8 << 30))


def odd() -> Metrics:
    """Every kind of value a column carries: lost GPUs, nulls amid numbers, XIDs, processes, no host."""
    return Metrics(type="metrics", ts=5.0, gpus=[
        GpuSample(index=3, uuid="GPU-c", utilization_gpu=0.0, temperature_c=-5.5, xids=[79, 13],
                  processes=[GpuProcess(pid=1), GpuProcess(pid=42, used_memory_bytes=2**40, name="python3")]),
        GpuSample(index=0, uuid="GPU-a", lost=True),
        GpuSample(index=1, uuid="é💥", power_w=1e6, energy_j=1e18, ecc_uncorrected=2**53, sm_clock_mhz=0),
    ])


def error_of(data: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse_agent_frame(data)
    return info.value


def compact_dict(metrics: Metrics | None = None) -> dict:
    return json.loads(dump_compact(metrics or simulated()))


def encode(frame: dict) -> str:
    """As the agent's encoder writes it (its head is the fast path's hint); NaN and Infinity allowed."""
    return json.dumps(frame, separators=(",", ":"), allow_nan=True)


def outcome(parse, data: str | bytes):
    try:
        return "ok", parse(data)
    except FrameError as error:
        return "refused", error.code, error.detail


def fast(data: str | bytes):
    return protocol._parse(data, protocol._agent_adapter, MAX_FRAME_BYTES, compact=True)


def slow(data: str | bytes):
    return protocol._explain(data, protocol._agent_adapter, compact=True)


# ---- round trip -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metrics", [simulated(), odd(), Metrics(type="metrics", ts=0.0)], ids=["sim", "odd", "empty"])
def test_v2_decodes_to_the_metrics_v1_gives(metrics):
    v1, v2 = dump(metrics), dump_compact(metrics)
    assert json.loads(v2)["v"] == 2 and json.loads(v1)["v"] == 1
    from_v1, from_v2 = parse_agent_frame(v1), parse_agent_frame(v2)
    assert from_v2 == from_v1 == metrics
    assert type(from_v2) is Metrics and all(type(gpu) is GpuSample for gpu in from_v2.gpus)
    assert dump(from_v2) == v1  # what the server stores and serves of it is byte for byte v1's
    assert from_v2.model_dump() == metrics.model_dump()
    assert parse_agent_frame(v2.replace('"v":2,', '"v": 2,', 1)) == metrics  # no hint: the slow path


def test_v2_is_about_half_the_bytes_of_v1():
    metrics = simulated()
    assert len(dump_compact(metrics)) < 0.6 * len(dump(metrics))


def test_columns_every_gpu_leaves_at_its_default_are_left_out():
    columns = compact_dict(odd())["gpus"]
    assert "fan_percent" not in columns and "power_limit_w" not in columns
    assert columns["lost"] == [False, True, False]
    assert columns["processes"] == [[{"pid": 1}, {"pid": 42, "used_memory_bytes": 2**40, "name": "python3"}], [], []]
    assert "lost" not in compact_dict()["gpus"]  # no simulated GPU is lost


def test_columns_are_gpu_samples_fields_with_their_types():
    assert tuple(GpuColumns.model_fields) == COLUMNS == tuple(GpuSample.model_fields)
    # expand() builds rows without GpuSample's validation: it must have none beyond its fields' types.
    decorators = GpuSample.__pydantic_decorators__
    assert not (decorators.model_validators or decorators.field_validators or decorators.validators)


# ---- refusals -----------------------------------------------------------------------------------------


def with_cell(column: str, gpu: int, value, *more: tuple[int, object]) -> dict:
    frame = compact_dict()
    for index, new in ((gpu, value), *more):
        default = GpuSample.model_fields[column].get_default(call_default_factory=True)
        frame["gpus"].setdefault(column, [default] * 8)[index] = new
    return frame


@pytest.mark.parametrize(("frame", "field"), [
    (with_cell("utilization_gpu", 3, 101), "gpus.3.utilization_gpu: Input should be less than or equal to 100"),
    (with_cell("temperature_c", 0, math.nan), "gpus.0.temperature_c: Input should be a finite number"),
    (with_cell("uuid", 2, "x" * 97), "gpus.2.uuid: String should have at most 96 characters"),
    (with_cell("uuid", 5, "a\x00b"), "gpus.5.uuid: Value error, must not contain NUL"),
    (with_cell("memory_used_bytes", 7, 2**53 + 1), "gpus.7.memory_used_bytes:"),
    (with_cell("xids", 4, [79, -1]), "gpus.4.xids.1: Input should be greater than or equal to 0"),
    (with_cell("processes", 1, [{"pid": "x"}]), "gpus.1.processes.0.pid:"),
    (with_cell("lost", 6, "maybe"), "gpus.6.lost:"),
    (with_cell("index", 1, 0), "gpus: Value error, two GPUs have index 0; each GPU must appear once"),
    (with_cell("uuid", 1, "same", (2, "same")), "gpus: Value error, two GPUs have uuid 'same'"),
])
def test_bad_cell_names_its_gpu_and_field(frame, field):
    error = error_of(encode(frame))
    assert error.code == "invalid_frame"
    assert error.detail.startswith(field), error.detail
    assert FIELD.match(error.detail)


def test_bad_columns_are_named():
    frame = compact_dict()
    frame["gpus"]["power_w"].pop()
    assert error_of(encode(frame)).detail.startswith("gpus.power_w: 7 values for 8 GPUs")
    frame = compact_dict()
    del frame["gpus"]["uuid"]
    assert error_of(encode(frame)).detail == "gpus.uuid: Field required"
    frame = compact_dict()
    frame["gpus"]["bogus"] = [1] * 8
    assert error_of(encode(frame)).detail.startswith("gpus.bogus: Extra inputs are not permitted")
    frame["gpus"] = {"index": list(range(300)), "uuid": [f"G{i}" for i in range(300)]}
    assert error_of(encode(frame)).detail.startswith("gpus.index: List should have at most 256 items")
    frame["gpus"] = {"index": [0], "uuid": ["G"], "power_w": None}
    assert error_of(encode(frame)).detail.startswith("gpus.power_w: Input should be a valid list")
    frame["gpus"] = [{"index": 0, "uuid": "G"}]  # v1's rows under v2
    assert error_of(encode(frame)).detail.startswith("gpus: Input should be a valid dictionary")
    frame = compact_dict()
    frame["ts"] = -1
    assert error_of(encode(frame)).detail.startswith("ts:")


def test_version_two_is_for_metrics_only():
    error = error_of('{"type":"hello","v":2,"agent_version":"x","host":{"hostname":"h"}}')
    assert (error.code, error.detail) == ("unsupported_version", "v: protocol version '2' is not supported; use 1")
    error = error_of(encode(compact_dict() | {"v": 3}))
    assert error.code == "unsupported_version"
    assert error.detail == "v: protocol version '3' is not supported; use 1 (or 2 for metrics)"
    assert parse_agent_frame(json.dumps({"type": "metrics", "ts": 1.0})) == Metrics(type="metrics", ts=1.0)  # v1


def test_size_is_checked_in_bytes_and_odd_text_is_refused_not_raised():
    assert error_of('{"type":"pong","nonce":"' + "é" * (MAX_FRAME_BYTES // 2) + '"}').code == "frame_too_large"
    assert error_of('{"type":"pong","nonce":"\ud800"}').code == "invalid_frame"  # a lone surrogate in a str
    assert error_of(b'{"type":"pong","nonce":"\xff"}').code == "invalid_json"


# ---- the fast path says what the slow path says ---------------------------------------------------------

EXTREME = st.sampled_from([0, -1, 2**31, 2**53, 2**53 + 1, 2**64, -0.0, 1e308, math.nan, math.inf, 1.0, True, None,
                           "", "\x00", "\ud800", "x" * 200, "GPU-0", [], [1], {}, {"pid": 1}])
CELL = st.one_of(EXTREME, st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=20), st.lists(st.integers(-5, 2**33), max_size=3))
V2_JUNK = st.fixed_dictionaries(
    {"type": st.just("metrics"), "v": st.sampled_from([2, 2, 2, 2.0, True, "2", 3, None]),
     "ts": st.one_of(st.just(1.7e9), st.just(0.0), CELL)},
    optional={
        "gpus": st.one_of(
            st.dictionaries(st.sampled_from([*COLUMNS, "bogus", ""]), st.one_of(st.lists(CELL, max_size=9), CELL),
                            max_size=6),
            CELL),
        "host": st.one_of(st.dictionaries(st.sampled_from(["cpu_percent", "memory_used_bytes", "x"]), CELL), CELL),
        "extra": CELL,
    })


GOOD = (simulated(), odd())  # made once: hypothesis replays each example's draws


@st.composite
def mutated(draw) -> str:
    """A good frame (v1 or v2) with one value changed, one column or field dropped, or raw bytes cut."""
    metrics = draw(st.sampled_from(GOOD))
    frame = json.loads(draw(st.sampled_from([dump, dump_compact]))(metrics))
    action = draw(st.sampled_from(["cell", "drop", "top", "cut", "none"]))
    gpus = frame["gpus"]
    if action == "cell" and gpus:
        if isinstance(gpus, dict):
            column = draw(st.sampled_from(list(gpus)))
            gpus[column][draw(st.integers(0, len(gpus[column]) - 1))] = draw(CELL)
        else:
            gpu = draw(st.sampled_from(gpus))
            gpu[draw(st.sampled_from([*COLUMNS, "bogus"]))] = draw(CELL)
    elif action == "drop" and gpus:
        target = gpus if isinstance(gpus, dict) else draw(st.sampled_from(gpus))
        target.pop(draw(st.sampled_from(sorted(target))))
    elif action == "top":
        frame[draw(st.sampled_from(["ts", "v", "type", "host", "gpus", "bogus"]))] = draw(CELL)
    text = encode(frame)
    if action == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(V2_JUNK.map(encode), mutated()))
def test_any_frame_is_taken_or_refused_alike_by_both_paths(data):
    """Junk v2 (and v1) frames only ever give FrameError, and the fast path's answer is the slow path's:
    the same Metrics, or the same code and detail."""
    got = outcome(fast, data)
    assert got == outcome(slow, data)
    assert outcome(fast, data.encode("utf-8", "surrogatepass")) == got or "\ud800" in data
    if got[0] == "refused":
        assert FIELD.match(got[2]), got[2]
        assert got[2].split(".")[0].split(":")[0] in {"frame", "type", "v", "ts", "gpus", "host", "bogus", "extra"}
    else:
        assert type(got[1]) is Metrics


@settings(max_examples=100, deadline=None)
@given(frame=st.one_of(
    st.dictionaries(st.sampled_from(["type", "v", "nonce", "request_id", "text"]),
                    st.one_of(st.sampled_from(["pong", "hello", "chat.delta", "metrics", "nope"]), CELL), max_size=4),
    st.lists(CELL, max_size=2)))
def test_other_frames_alike_by_both_paths(frame):
    data = json.dumps(frame, allow_nan=True)
    assert outcome(fast, data) == outcome(slow, data)


# ---- what the server offers ---------------------------------------------------------------------------


def test_welcome_protocols_default_to_v1_and_are_left_out_of_the_frame():
    old = Welcome(type="welcome", node_id=1, node_name="n", heartbeat_interval=10, metrics_interval=1,
                  offline_after=30)
    assert "protocols" not in json.loads(dump(old))  # an older agent (extra fields refused) still takes it
    assert old.protocols is None
    new = parse_server_frame(dump(old.model_copy(update={"protocols": [1, 2]})))
    assert new.protocols == [1, 2]
    metrics = simulated()
    assert json.loads(dump_metrics(metrics, old.protocols))["v"] == 1
    assert json.loads(dump_metrics(metrics, [1]))["v"] == 1
    assert json.loads(dump_metrics(metrics, new.protocols))["v"] == 2


@pytest.mark.parametrize("protocols", [None, [1], [1, 2], [2, 1, 7]])
async def test_agent_sends_v2_only_to_a_server_whose_welcome_lists_it(tmp_path, protocols):
    sent: list[tuple[int, Metrics]] = []
    enough = asyncio.Event()

    async def handler(ws, n):
        parse_agent_frame(await ws.recv())  # hello
        await ws.send(dump(Welcome(type="welcome", node_id=7, node_name="node-7", heartbeat_interval=10,
                                   metrics_interval=0.05, offline_after=30, protocols=protocols)))
        while len(sent) < 2:
            raw = await ws.recv()
            frame = parse_agent_frame(raw)  # what the server parses, in either encoding
            if isinstance(frame, Metrics):
                sent.append((json.loads(raw)["v"], frame))
        enough.set()
        async for _ in ws:
            pass

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        task = start(server.url, tmp_path / "home", stop)
        await asyncio.wait_for(enough.wait(), 10)
        stop.set()
        await asyncio.wait_for(task, 10)
    expected = 2 if protocols and 2 in protocols else 1
    assert [version for version, _ in sent] == [expected, expected]
    assert all(len(frame.gpus) == 8 and frame.host is not None for _, frame in sent)

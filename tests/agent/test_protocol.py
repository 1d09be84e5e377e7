from __future__ import annotations

import json

import pytest

from fleet.agent.protocol import (
    MAX_FRAME_BYTES,
    FrameError,
    GpuInfo,
    Hello,
    HostFacts,
    Ping,
    Welcome,
    dump,
    parse_agent_frame,
    parse_server_frame,
)


def hello_dict(**changes) -> dict:
    frame = {
        "type": "hello",
        "v": 1,
        "agent_version": "0.1.0",
        "host": {"hostname": "gpu-01", "os": "Ubuntu 22.04", "arch": "x86_64", "labels": {"rack": "a1"}},
        "gpus": [{"index": 0, "uuid": "GPU-abc", "name": "NVIDIA H100 80GB HBM3"}],
    }
    frame.update(changes)
    return frame


def parse_error(data) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse_agent_frame(data if isinstance(data, str | bytes) else json.dumps(data))
    return info.value


def test_hello_round_trip():
    hello = Hello(
        type="hello",
        agent_version="0.1.0",
        host=HostFacts(hostname="gpu-01", cpu_count=64, memory_bytes=2**40, kind="gpu_server",
                       labels={"zone": "eu"}),
        gpus=[GpuInfo(index=i, uuid=f"GPU-{i}", name="NVIDIA A100-SXM4-40GB", mig_mode=None)
              for i in range(4)],
        gpu_note=None,
    )
    parsed = parse_agent_frame(dump(hello))
    assert parsed == hello
    assert json.loads(dump(hello))["v"] == 1


def test_missing_gpu_uuid_names_the_field():
    frame = hello_dict(gpus=[{"index": 0, "name": "x"}])
    error = parse_error(frame)
    assert error.code == "invalid_frame"
    assert error.detail.startswith("gpus.0.uuid:")
    assert error.to_frame()["type"] == "error"


def test_wrong_type_names_nested_field():
    error = parse_error(hello_dict(host={"hostname": "h", "cpu_count": -1}))
    assert error.detail.startswith("host.cpu_count:")


def test_extra_field_is_refused():
    error = parse_error(hello_dict(surprise=1))
    assert error.detail.startswith("surprise:")


def test_unknown_type():
    error = parse_error({"type": "launch-missiles", "v": 1})
    assert error.code == "unknown_type"
    assert "launch-missiles" in error.detail


def test_missing_type_and_non_object():
    assert parse_error({"v": 1}).detail.startswith("type:")
    assert parse_error("[1, 2]").code == "invalid_frame"
    assert parse_error("{not json").code == "invalid_json"


def test_bad_version():
    error = parse_error(hello_dict(v=2))
    assert error.code == "unsupported_version"
    assert error.detail.startswith("v:")


def test_oversize_frame():
    data = json.dumps(hello_dict(gpu_note="x" * 100))
    error = parse_error("x" * (MAX_FRAME_BYTES + 1))
    assert error.code == "frame_too_large"
    with pytest.raises(FrameError) as info:
        parse_agent_frame(data, max_bytes=100)
    assert info.value.code == "frame_too_large"


def test_server_frames_parse():
    welcome = Welcome(type="welcome", node_id=3, node_name="n", heartbeat_interval=10,
                      metrics_interval=1, offline_after=30)
    assert parse_server_frame(dump(welcome)) == welcome
    assert parse_server_frame(b'{"type": "ping", "nonce": "n1"}') == Ping(type="ping", nonce="n1")
    with pytest.raises(FrameError) as info:
        parse_server_frame('{"type": "deploy", "command_id": "c1", "repo": "r", "sha": "nothex"}')
    assert info.value.detail.startswith("sha:")


def test_command_event_pull_rate_is_bounded():
    event = {"type": "event", "v": 1, "command_id": "c1", "state": "downloading", "bytes_done": 5,
             "bytes_total": 10, "bytes_per_second": 1_500_000_000}
    assert parse_agent_frame(json.dumps(event)).bytes_per_second == 1_500_000_000
    for bad in (-1, 10**13, 1e400, "fast", 2.5):
        error = parse_error({**event, "bytes_per_second": bad})
        assert "bytes_per_second" in str(error), bad

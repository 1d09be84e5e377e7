"""The fast path (fleet.agent.pull) against a small Range server: parallel ranges into one file, resume of
only the missing ranges after a real kill, a flipped byte caught by sha256 and its range fetched again, a
file that stays corrupt never reaching blobs/, the node-wide rate cap, settings validated."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.agent.pull import SIDECAR, FileSpec, Puller, PullError, ranges_written
from fleet.agent.pullconfig import ConfigError, PullConfig, RateCap
from tests.agent.rangeserver import RangeServer

KIB = 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


def _data(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(bytes([seed])).digest() * 64
    return bytes(b ^ (i % 251) for i, b in enumerate((block * (size // len(block) + 1))[:size]))


def _spec(server: RangeServer, blobs: Path, data: bytes, name: str = "/model.safetensors") -> FileSpec:
    digest = hashlib.sha256(data).hexdigest()
    return FileSpec(path=name.lstrip("/"), url=server.url + name, size=len(data), sha256=digest,
                    final=blobs / digest)


@pytest.fixture
def served():
    servers = []

    def start(data: bytes, **kwargs) -> RangeServer:
        server = RangeServer({"/model.safetensors": data}, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_parallel_ranges_land_in_a_verified_blob(served, tmp_path) -> None:
    data = _data(300 * KIB + 123)
    server = served(data)
    spec = _spec(server, tmp_path / "blobs", data)
    puller = Puller(PullConfig(min_size=0, ranges=4, chunk=32 * KIB), token="")
    run = puller.prepare([spec])
    run.run()
    assert spec.final.read_bytes() == data
    assert not spec.partial.exists() and not spec.sidecar.exists()
    assert run.verified() == {"model.safetensors"} and run.bytes_done() == len(data)
    asked = sorted(server.ranges("/model.safetensors"))
    assert asked == [(s, min(len(data), s + 32 * KIB) - 1) for s in range(0, len(data), 32 * KIB)]
    # already in place: nothing is fetched again
    before = len(server.requests)
    puller.prepare([spec]).run()
    assert len(server.requests) == before


def test_two_paths_with_the_same_bytes_are_fetched_once(served, tmp_path) -> None:
    data = _data(100 * KIB)
    server = served(data)
    server.files["/copy.safetensors"] = data
    blobs = tmp_path / "blobs"
    first, second = _spec(server, blobs, data), _spec(server, blobs, data, "/copy.safetensors")
    run = Puller(PullConfig(min_size=0, ranges=2, chunk=32 * KIB), token="").prepare([first, second])
    run.run()
    assert first.final.read_bytes() == data and run.verified() == {"model.safetensors", "copy.safetensors"}
    assert len(server.ranges("/model.safetensors")) + len(server.ranges("/copy.safetensors")) == 4


KILLED_RUN = """
import sys
from pathlib import Path
from fleet.agent.pull import FileSpec, Puller
from fleet.agent.pullconfig import PullConfig
url, size, sha, final = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
spec = FileSpec(path="model.safetensors", url=url, size=size, sha256=sha, final=final)
Puller(PullConfig(min_size=0, ranges=2, chunk=64 * 1024), token="").prepare([spec]).run()
"""


def test_a_killed_download_resumes_only_the_missing_ranges(served, tmp_path) -> None:
    data = _data(1024 * KIB)
    server = served(data, piece=16 * KIB, delay=0.01)  # ~40 ms per 64 KiB range: killed well before the end
    spec = _spec(server, tmp_path / "blobs", data)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, spec.url, str(spec.size), spec.sha256,
                             str(spec.final)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 30
        while (ranges_written(spec.final, spec.size) or 0) < 4 * 64 * KIB:
            assert proc.poll() is None and time.monotonic() < deadline, "the download ended or never started"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads(spec.sidecar.read_text())
    done = set(state["done"])
    assert 4 <= len(done) < 16 and spec.partial.stat().st_size == len(data) and not spec.final.exists()
    # the resume asks another server (a killed client's last request may still sit in the first one's queue)
    again = served(data)
    resumed = FileSpec(path=spec.path, url=again.url + "/model.safetensors", size=spec.size, sha256=spec.sha256,
                       final=spec.final)
    run = Puller(PullConfig(min_size=0, ranges=3, chunk=8 * KIB), token="").prepare([resumed])
    assert run.bytes_done() == len(done) * 64 * KIB  # progress starts from what is on disk
    run.run()
    assert spec.final.read_bytes() == data
    # the sidecar's range size wins over the new setting, and only the missing ranges were asked for
    assert sorted(again.ranges("/model.safetensors")) == [(i * 64 * KIB, (i + 1) * 64 * KIB - 1) for i in range(16)
                                                          if i not in done]


def test_a_flipped_byte_is_caught_and_its_range_fetched_again(served, tmp_path, caplog) -> None:
    data = _data(256 * KIB)
    server = served(data)
    offset = 100 * KIB + 7  # in the range 96-128 KiB
    server.flips[offset] = 1
    spec = _spec(server, tmp_path / "blobs", data)
    caplog.set_level(logging.INFO, logger="fleet.agent.pull")
    run = Puller(PullConfig(min_size=0, ranges=4, chunk=32 * KIB), token="").prepare([spec])
    run.run()
    assert spec.final.read_bytes() == data
    asked = server.ranges("/model.safetensors")
    assert asked.count((96 * KIB, 128 * KIB - 1)) == 2
    assert "sha256 mismatch" in caplog.text
    assert f"range(s) {96 * KIB}-{128 * KIB - 1} had wrong bytes and were fetched again" in caplog.text


def test_a_file_that_stays_corrupt_never_reaches_the_blobs_folder(served, tmp_path) -> None:
    data = _data(128 * KIB)
    server = served(data)
    server.flips[5] = 1000
    spec = _spec(server, tmp_path / "blobs", data)
    run = Puller(PullConfig(min_size=0, ranges=2, chunk=32 * KIB), token="").prepare([spec])
    with pytest.raises(PullError, match="model.safetensors sha256 mismatch after 3 downloads"):
        run.run()
    assert not spec.final.exists() and not spec.partial.exists() and not spec.sidecar.exists()
    assert run.verified() == set()


def test_a_cut_connection_is_retried_and_a_wrong_range_fails(served, tmp_path, monkeypatch) -> None:
    data = _data(96 * KIB)
    server = served(data)
    server.cuts = 2
    spec = _spec(server, tmp_path / "blobs", data)
    monkeypatch.setattr("fleet.agent.pull.time.sleep", lambda _s: None)
    Puller(PullConfig(min_size=0, ranges=1, chunk=32 * KIB), token="").prepare([spec]).run()
    assert spec.final.read_bytes() == data and server.cuts == 0
    assert len(server.ranges("/model.safetensors")) == 3 + 2  # three ranges, two of them twice
    other = _data(96 * KIB, seed=2)
    server.files["/model.safetensors"] = other[: 50 * KIB]  # the server has another, shorter file
    spec = _spec(server, tmp_path / "blobs", other)
    with pytest.raises(PullError, match=r"asked for bytes \d+-\d+/98304, got 206 bytes \d+-\d+/51200"):
        Puller(PullConfig(min_size=0, ranges=2, chunk=32 * KIB), token="").prepare([spec]).run()
    assert not spec.final.exists()


def test_rate_cap_spaces_the_bytes(monkeypatch) -> None:
    clock = {"now": 100.0}
    slept = []
    monkeypatch.setattr("fleet.agent.pullconfig.time.monotonic", lambda: clock["now"])

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr("fleet.agent.pullconfig.time.sleep", sleep)
    cap = RateCap(1000)
    for _ in range(10):
        cap.take(500)
    assert clock["now"] - 100.0 == pytest.approx(5.0 - 0.1, abs=0.01)  # 5000 bytes at 1000/s, 0.1 s burst
    RateCap(0).take(10**9)  # no cap: no wait
    assert len(slept) == 10


@pytest.mark.parametrize(("env", "words"), [
    ({"FLEET_AGENT_PULL_RANGES": "0"}, "FLEET_AGENT_PULL_RANGES='0' must be a whole number from 1 to 64"),
    ({"FLEET_AGENT_PULL_RANGES": "lots"}, "FLEET_AGENT_PULL_RANGES='lots' must be a whole number"),
    ({"FLEET_AGENT_PULL_RATE": "fast"}, "FLEET_AGENT_PULL_RATE='fast' must be a size such as 64M"),
    ({"FLEET_AGENT_PULL_CHUNK": "10"}, "FLEET_AGENT_PULL_CHUNK='10' must be at least 4.0 KiB"),
    ({"FLEET_AGENT_PULL_MIN": "-1"}, "FLEET_AGENT_PULL_MIN='-1' must be a size"),
])
def test_bad_pull_settings(env, words) -> None:
    with pytest.raises(ConfigError, match=words):
        PullConfig.from_env(env)


def test_pull_settings() -> None:
    config = PullConfig.from_env({"FLEET_AGENT_PULL_RANGES": "16", "FLEET_AGENT_PULL_RATE": "200M",
                                  "FLEET_AGENT_PULL_MIN": "1G", "FLEET_AGENT_PULL_CHUNK": "8M"})
    assert config == PullConfig(min_size=1024**3, ranges=16, chunk=8 * 1024**2, rate=200 * 1024**2)
    assert PullConfig.from_env({}) == PullConfig()


def test_sidecar_name() -> None:
    assert FileSpec("a", "u", 1, "f" * 64, Path("/x/blobs") / ("f" * 64)).sidecar.name == "f" * 64 + SIDECAR

"""bench/chat.py runs end to end with tiny parameters and prints its table and one JSON object (no timing
asserted: the figures depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch", reason="the builtin runtime needs torch (pip install 'fleet[runtime]')")
pytestmark = pytest.mark.integration


def test_bench_runs_with_tiny_parameters():
    result = subprocess.run(
        [sys.executable, "bench/chat.py", "--requests", "2", "--latency-tokens", "4", "--tokens", "6", "--rounds", "1",
         "--concurrency", "1,2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert set(figures["paths"]) == {"direct", "gateway", "socket"}
    for name, path in figures["paths"].items():
        assert path["ttft_ms"]["p50"] > 0 and path["itl_ms"]["p50"] > 0, (name, path)
        assert set(path["tokens_per_s"]) == {"1", "2"} and all(v > 0 for v in path["tokens_per_s"].values())
    for name in ("gateway", "socket"):
        assert set(figures["paths"][name]["throughput_ratio"]) == {"1", "2"}
        assert isinstance(figures["paths"][name]["meets_targets"], bool)
    table = "\n".join(lines[:-1])
    assert "TTFT p50" in table and "tok/s C=2" in table and "targets: added TTFT p50 < 5 ms" in table


def test_bench_refuses_bad_parameters():
    result = subprocess.run([sys.executable, "bench/chat.py", "--concurrency", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--concurrency values must be from 1 to 64" in result.stderr

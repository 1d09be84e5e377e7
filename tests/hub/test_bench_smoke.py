"""bench/hub.py runs end to end (tiny size, one agent); its figures are not asserted, only that it works,
that the upstream saw each byte once, and that the pull measure (over the agent's fast-path threshold) ends
with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_bench_hub_smoke() -> None:
    command = [sys.executable, "bench/hub.py", "--size-mb", "8", "--agents", "1", "--repeat", "1",
               "--pull-mb", "80", "--pull-agents", "1", "--pull-repeat", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "N=1: upstream 1.00x of 8 MB" in result.stdout
    assert "| 1 | 8 MB | 1.00× |" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["pull_ratio_1"] > 0 and summary["pull_ratio_4"] is None and summary["agent_rss_mb_peak"] > 0
    assert "pull of 80 MB by 1 agent(s) at once" in result.stdout

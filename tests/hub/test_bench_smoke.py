"""bench/hub.py runs end to end (tiny size, one agent); its figures are not asserted, only that it works
and that the upstream saw each byte once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_bench_hub_smoke() -> None:
    command = [sys.executable, "bench/hub.py", "--size-mb", "8", "--agents", "1", "--repeat", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "N=1: upstream 1.00x of 8 MB" in result.stdout
    assert "| 1 | 8 MB | 1.00× |" in result.stdout

"""bench/telemetry.py runs end to end with tiny parameters and prints its figures (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_bench_runs_with_tiny_parameters():
    result = subprocess.run(
        [sys.executable, "bench/telemetry.py", "--nodes", "3", "--duration", "2", "--settle", "1", "--procs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fleet N=     3" in result.stdout and "bare  N=     3" in result.stdout
    assert "Fleet ÷ bare at N=3" in result.stdout and "p99" in result.stdout


def test_bench_refuses_bad_parameters():
    result = subprocess.run([sys.executable, "bench/telemetry.py", "--nodes", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--nodes must be at least 1" in result.stderr

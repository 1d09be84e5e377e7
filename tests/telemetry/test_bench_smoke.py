"""bench/telemetry.py runs end to end with tiny parameters and prints its figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
TINY = ["--nodes", "3", "--duration", "2", "--settle", "1", "--procs", "1"]
KEYS = {"bare_max_n", "fleet_max_n_1proc", "fleet_max_n_2proc", "ratio_1proc", "ratio_2proc", "p99_ms",
        "rss_per_agent_kb", "reconnect_storm_s"}


def _bench(*args: str) -> tuple[str, dict]:
    result = subprocess.run([sys.executable, "bench/telemetry.py", *TINY, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_runs_on_the_production_path(services):
    out, report = _bench("--storm-nodes", "3", "--dashboards", "2")
    for server in ("bare    N=     3", "daphne  N=     3", "fleet/1 N=     3", "fleet/2 N=     3", "dashboards 2",
                   "storm: ", "offered twice its capacity, N=6"):
        assert server in out
    assert KEYS <= set(report)
    assert report["storm_n"] == 3
    assert report["daphne_max_n"] in (0, 3) and "ratio_2proc_of_daphne" in report  # 6 frames: held is luck
    assert report["overload"]["n"] == 6 and "rss_growth_mb_per_min" in report["overload"]


def test_bench_runs_on_the_embedded_default():
    out, report = _bench("--embedded", "--storm-nodes", "0", "--dashboards", "0", "--overload", "0")
    assert "fleet/1 N=     3" in out and "fleet/2" not in out
    assert {"bare_max_n", "fleet_max_n_1proc", "ratio_1proc"} <= set(report)


def test_bench_refuses_bad_parameters():
    result = subprocess.run([sys.executable, "bench/telemetry.py", "--nodes", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--nodes must be at least 1" in result.stderr

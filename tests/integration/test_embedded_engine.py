"""The embedded default (SQLite): the engine runs inside Daphne, started by the first request; with two
server processes on one database only one leads, and when it stops (cleanly) the other takes over."""

from __future__ import annotations

import signal

import pytest

from tests.integration.harness import Stack, wait_until

pytestmark = pytest.mark.integration
LEADING = "embedded engine leading: telemetry-retention, hub-sync, rollouts, deployments"


def test_the_engine_runs_inside_daphne_and_one_process_leads(tmp_path) -> None:
    stack = Stack(tmp_path, servers=2).start()  # start() requests a page from each process
    logs = [tmp_path / f"daphne-{port}.log" for port in stack.ports]
    try:
        wait_until(lambda: any(LEADING in log.read_text() for log in logs), 60, "an engine to lead")
        leaders = [index for index, log in enumerate(logs) if LEADING in log.read_text()]
        assert len(leaders) == 1, stack.logs()
        first, other = leaders[0], 1 - leaders[0]
        stack.processes[first].send_signal(signal.SIGTERM)
        stack.processes[first].wait(timeout=30)
        assert "embedded engine stops leading" in logs[first].read_text()  # released at exit
        wait_until(lambda: LEADING in logs[other].read_text(), 60, "the other process to take over")
    finally:
        stack.stop()

"""`make demo` as a terminal shows it: SIGTERM stops it as Ctrl-C does (three tries), the access log goes to
var/demo/access.log instead of the terminal, and a second demo on a taken port says so and exits."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.integration.demo_process import running_demo
from tests.integration.harness import ROOT, free_port

pytestmark = pytest.mark.integration

NODES = "h100x8:1,jetson-orin:1"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_demo_and_the_terminal_stays_clean(tmp_path, demo_models) -> None:
    for attempt in range(3):  # the old handler deadlocked in 2 of 3 tries
        with running_demo(tmp_path, demo_models, FLEET_DEMO_NODES=NODES) as demo:
            with urllib.request.urlopen(demo.url + "/accounts/login/?probe=" + str(attempt), timeout=10) as page:
                assert page.status == 200
            output = demo.log.read_text()
            pids = [int(pid) for pid in re.findall(r"agent \S+\s+\S+\s+pid (\d+)", output)]
            assert len(pids) == 2, output
            demo.process.send_signal(signal.SIGTERM)
            assert demo.process.wait(timeout=30) == 0, f"try {attempt + 1}: {demo.log.read_text()}"
            output = demo.log.read_text()
            assert output.rstrip().endswith("stopped"), output
            assert not [pid for pid in pids if _alive(pid)]
    access = (tmp_path / "var" / "demo" / "access.log").read_text()
    assert "/accounts/login/?probe=2" in access
    assert "/accounts/login/" not in output and '"GET ' not in output  # the terminal: banner and problems
    assert "access log: " + str(tmp_path / "var" / "demo" / "access.log") in output


def test_a_demo_on_a_taken_port_says_so_and_exits(tmp_path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))},
               "FLEET_VAR_DIR": str(tmp_path / "var")}
        result = subprocess.run([sys.executable, "manage.py", "demo", "--port", str(port)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr, result.stderr
    assert "Fleet is running" not in result.stdout
    assert not (tmp_path / "var" / "demo" / "agents").exists()  # no agent started to displace anyone's

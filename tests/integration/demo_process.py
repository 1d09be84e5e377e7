"""`manage.py demo` as a subprocess for the tests that use it as a person (or a pipeline) would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from tests.integration.harness import ROOT, free_port, wait_until

PASSWORD = "demo-password-for-tests"


class Demo:
    def __init__(self, url: str, process: subprocess.Popen, log: Path, env: dict[str, str]):
        self.url, self.process, self.log, self.env = url, process, log, env

    def manage(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout.strip()

    def request(self, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
        """A JSON request with ``Authorization: Bearer``; returns (status, decoded body)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


@contextlib.contextmanager
def running_demo(tmp_path: Path, demo_models: Path, **env: str) -> Iterator[Demo]:
    """The demo on a free port in ``tmp_path``, up once it printed its banner; stopped with SIGTERM (or its
    process group killed) afterwards if the test did not stop it."""
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))},
        "FLEET_VAR_DIR": str(tmp_path / "var"),
        "FLEET_DEMO_MODELS": str(demo_models),  # SmolLM2 converted once per test run
        "FLEET_ADMIN_PASSWORD": PASSWORD,
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    log_path = tmp_path / "demo.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "manage.py", "demo", "--port", str(port)], cwd=ROOT,
                                   env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = wait_until(lambda: "Fleet is running" in log_path.read_text() or process.poll() is not None,
                             120, "the demo to start")
        assert started and process.poll() is None, log_path.read_text()
        yield Demo(f"http://127.0.0.1:{port}", process, log_path, environment)
    finally:
        # Its server, agents and their runtimes run in sessions of their own: remember them before stopping,
        # so that none outlives the test however the demo ends.
        try:
            family = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            family = []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the demo stops its server and agents itself
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for leftover in family:
            with contextlib.suppress(psutil.Error):
                leftover.kill()

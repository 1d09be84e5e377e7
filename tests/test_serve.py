"""`python -m fleet.serve` with FLEET_WEB_PROCESSES: argument handling, refusals, and N real Daphne
processes on one socket (restart of a dead child, clean stop)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from fleet.lib.env import ConfigError
from fleet.serve import split_bind

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [
    ["-b", "0.0.0.0", "-p", "9000", "--proxy-headers", "fleet.asgi:application"],
    ["--bind=0.0.0.0", "--port=9000", "--proxy-headers", "fleet.asgi:application"],
    ["--proxy-headers", "--bind", "0.0.0.0", "fleet.asgi:application", "--port", "9000"],
])
def test_split_bind_takes_the_address_and_keeps_the_rest(argv):
    host, port, rest = split_bind(argv)
    assert (host, port) == ("0.0.0.0", 9000)
    assert sorted(rest) == ["--proxy-headers", "fleet.asgi:application"]


@pytest.mark.parametrize("argv, words", [
    (["-u", "/tmp/fleet.sock", "app"], "not -u"),
    (["--fd", "3", "app"], "not --fd"),
    (["-p", "http", "app"], "'http' is not a port number"),
])
def test_split_bind_refuses_what_processes_cannot_share(argv, words):
    with pytest.raises(ConfigError, match=words):
        split_bind(argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(env: dict[str, str], port: int, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "fleet.serve", "-b", "127.0.0.1", "-p", str(port), "fleet.asgi:application"]
    return subprocess.Popen(command, cwd=ROOT, env=env, **kwargs)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))}
    return {**inherited, "FLEET_VAR_DIR": str(tmp_path / "var"), "FLEET_LOG_LEVEL": "WARNING",
            "FLEET_SECRET_KEY": "serve-test-secret-key-0123456789abcdef0123", **extra}


def test_several_processes_need_redis(tmp_path):
    done = _serve(_env(tmp_path, FLEET_WEB_PROCESSES="2"), _free_port(), stderr=subprocess.PIPE, text=True)
    _, err = done.communicate(timeout=60)
    assert done.returncode == 2
    assert "FLEET_WEB_PROCESSES=2 needs REDIS_URL" in err and "Traceback" not in err


def test_a_bad_process_count_is_named(tmp_path):
    done = _serve(_env(tmp_path, FLEET_WEB_PROCESSES="many"), _free_port(), stderr=subprocess.PIPE, text=True)
    _, err = done.communicate(timeout=60)
    assert done.returncode == 2
    assert "FLEET_WEB_PROCESSES='many' is not a whole number" in err and "Traceback" not in err


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def _children(parent: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(parent.pid).children() if p.is_running() and p.status() != "zombie"]


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_processes_share_one_socket_restart_and_stop(tmp_path, services):
    env = _env(tmp_path, FLEET_WEB_PROCESSES="2", REDIS_URL=services["redis"], FLEET_CHANNEL_PREFIX="serve-test")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    port = _free_port()
    server = _serve(env, port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _get(base + "/accounts/login/") == 200, what="the first answer")
        children = _wait(lambda: len(_children(server)) == 2 and _children(server), what="two web processes")
        # Both accept on the shared socket: many fresh connections reach more than one pid.
        assert all(_get(base + "/accounts/login/") == 200 for _ in range(20))
        first = children[0]
        first.kill()
        _wait(lambda: len(_children(server)) == 2 and first.pid not in {p.pid for p in _children(server)},
              timeout=30, what="the killed process to be replaced")
        assert _get(base + "/accounts/login/") == 200
        pids = [p.pid for p in _children(server)]
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    finally:
        if server.poll() is None:
            server.kill()

"""Real processes for integration tests: migrated database, Daphne servers, fleet-agent subprocesses,
a logged-in browser websocket. Everything listens on 127.0.0.1 free ports."""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """A Fleet deployment in a temporary folder: one database, N Daphne processes."""

    def __init__(self, tmp: Path, *, database_url: str | None = None, redis_url: str | None = None,
                 servers: int = 1, offline_after: float = 3, engine: bool = False, daphne_args: tuple[str, ...] = ()):
        self.tmp = tmp
        self.engine = engine  # also run `manage.py engine` (hub sync downloads happen only there)
        self.daphne_args = daphne_args
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))},
            "DJANGO_SETTINGS_MODULE": "fleet.settings",
            "FLEET_VAR_DIR": str(tmp / "var"),
            "FLEET_SECRET_KEY": "integration-test-secret-key-0123456789abcdef",
            "FLEET_OFFLINE_AFTER": str(offline_after),
            "PYTHONUNBUFFERED": "1",
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.database_url = database_url
        self.ports = [free_port() for _ in range(servers)]
        self.processes: list[subprocess.Popen] = []

    def manage(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout.strip()

    def start(self) -> Stack:
        self.manage("migrate", "--verbosity", "0")
        self.processes.extend(self._server(port) for port in self.ports)
        if self.engine:
            self.processes.append(self._engine())
        for port in self.ports:
            wait_until(lambda p=port: _http_ok(f"http://127.0.0.1:{p}/accounts/login/"), 90, f"daphne on {port}")
        return self

    def _server(self, port: int) -> subprocess.Popen:
        log = open(self.tmp / f"daphne-{port}.log", "a")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "fleet.serve", "-b", "127.0.0.1", "-p", str(port), *self.daphne_args,
             "fleet.asgi:application"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )

    def _engine(self) -> subprocess.Popen:
        log = open(self.tmp / "engine.log", "a")  # noqa: SIM115
        return subprocess.Popen([sys.executable, "manage.py", "engine"], cwd=ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)

    def kill_server(self, index: int = 0) -> None:
        """SIGKILL one Daphne process (no clean shutdown: what a crash or an OOM kill does)."""
        self.processes[index].kill()
        self.processes[index].wait(timeout=10)

    def restart_server(self, index: int = 0) -> None:
        self.processes[index] = self._server(self.ports[index])
        wait_until(lambda: _http_ok(f"{self.url(index)}/accounts/login/"), 90, f"daphne on {self.ports[index]}")

    def kill_engine(self) -> None:
        engine = self.processes[len(self.ports)]
        engine.kill()
        engine.wait(timeout=10)

    def restart_engine(self) -> None:
        self.processes[len(self.ports)] = self._engine()

    def url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    def logs(self) -> str:
        return "\n".join(path.read_text()[-3000:] for path in sorted(self.tmp.glob("daphne-*.log"))
                         + sorted(self.tmp.glob("engine.log")))

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the stack's database directly (the test process has its own Django database)."""
        if self.database_url:
            import psycopg

            with psycopg.connect(self.database_url) as conn:
                return conn.execute(sql.replace("?", "%s"), params).fetchall()
        with contextlib.closing(sqlite3.connect(self.tmp / "var" / "fleet.sqlite3", timeout=10)) as conn:
            return conn.execute(sql, params).fetchall()

    def node_status(self, name: str) -> str | None:
        rows = self.query("SELECT status FROM inventory_node WHERE name = ?", (name,))
        return rows[0][0] if rows else None


class Agent:
    """A real `fleet-agent` (python -m fleet.agent) with its own home folder."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home = home
        self.env = {**env, "FLEET_AGENT_HOME": str(home)}
        self.process: subprocess.Popen | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fleet.agent", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=60)

    def run(self, *args: str) -> Agent:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "run.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "fleet.agent", "run", *args], cwd=ROOT,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        path = self.home / "run.log"
        return path.read_text()[-3000:] if path.exists() else ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def login_cookie(base_url: str, username: str, password: str) -> str:
    """Log in through the real login form (CSRF included) and return the Cookie header value."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base_url}/accounts/login/", timeout=10).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": csrf})
    request = urllib.request.Request(f"{base_url}/accounts/login/", data=body.encode(),
                                     headers={"Referer": f"{base_url}/accounts/login/"})
    opener.open(request, timeout=10)
    cookies = {cookie.name: cookie.value for cookie in jar}
    assert "sessionid" in cookies, "login failed"
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


class LiveSocket:
    """A logged-in browser's `/ws/live/` socket."""

    def __init__(self, base_url: str, cookie: str):
        self.url = base_url.replace("http://", "ws://") + "/ws/live/"
        self.headers = {"Cookie": cookie, "Origin": base_url}
        self.ws = None

    async def __aenter__(self) -> LiveSocket:
        self.ws = await websockets.connect(self.url, additional_headers=self.headers, open_timeout=10)
        await self.ws.send(json.dumps({"type": "subscribe", "topics": ["fleet"]}))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def wait_for(self, predicate: Callable[[dict], bool], timeout: float, what: str = "a message") -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            except TimeoutError:
                break
            if predicate(message):
                return message
        raise AssertionError(f"no live message with {what} within {timeout}s")

    async def wait_for_node(self, name: str, status: str, timeout: float) -> dict:
        def match(message: dict) -> bool:
            node = message.get("node") or {}
            return message.get("kind") == "node" and node.get("name") == name and node.get("status") == status

        return await self.wait_for(match, timeout, f"{name} {status}")

"""The servers bench/telemetry.py measures side by side: Fleet (1 or N Daphne processes on the production
path, PostgreSQL + Redis; or the embedded default) and a bare `websockets` server (the ceiling), and the
readings a phase takes of them (frame counters, /metrics scrapes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("FLEET_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("FLEET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    return []


def tree_rss(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the process and its live children."""
    total = 0.0
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class Fleet:
    """One Fleet deployment: its database (nodes + secrets + a viewer session) set up once, the
    server (re)started per phase with ``processes`` Daphne processes."""

    def __init__(self, tmp: Path, nodes: int, production: bool, heartbeat: float | None = None):
        self.tmp, self.production = tmp, production
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))}
        self.env = {**inherited, "DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_VAR_DIR": str(tmp / "var"),
                    "FLEET_SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789",
                    "FLEET_METRICS_ALLOW": "127.0.0.1", "FLEET_MAX_AGENT_CONNECTIONS": str(nodes + 100),
                    "FLEET_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        if production:
            self.database = f"fleet_bench_{uuid.uuid4().hex[:8]}"
            self.prefix = f"bench-{uuid.uuid4().hex[:8]}"
            self._create_database()
            self.env.update(DATABASE_URL=f"{POSTGRES}/{self.database}", REDIS_URL=REDIS,
                            FLEET_CHANNEL_PREFIX=self.prefix)
        if heartbeat:  # per-agent timers (ping, command poll) scale with N / heartbeat
            self.env.update(FLEET_HEARTBEAT_INTERVAL=str(heartbeat), FLEET_OFFLINE_AFTER=str(3 * heartbeat))
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.secrets, self.node_ids = self._nodes(nodes)
        self.cookie = self._session()
        self.process: subprocess.Popen | None = None
        self.port = free_port()

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def _nodes(self, count: int) -> tuple[list[str], list[int]]:
        from fleet.inventory.models import Node, NodeCredential
        from fleet.lib.secrets import hash_secret, hint, new_secret

        Node.objects.bulk_create([Node(name=f"bench-{i:05d}", hostname=f"bench-{i:05d}") for i in range(count)],
                                 batch_size=2000)
        nodes = list(Node.objects.order_by("name"))
        secrets = [new_secret("fns") for _ in nodes]
        NodeCredential.objects.bulk_create([NodeCredential(node=n, secret_hash=hash_secret(s), hint=hint(s))
                                            for n, s in zip(nodes, secrets, strict=True)], batch_size=2000)
        return secrets, [n.pk for n in nodes]

    def _session(self) -> str:
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
        from django.contrib.sessions.backends.db import SessionStore

        user = get_user_model().objects.create_user("bench", password="bench-password-1", role="viewer")
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        return f"sessionid={session.session_key}"

    def reset(self) -> None:
        """Between phases: every node offline and no live copy left in Redis, as after a long outage."""
        from fleet.inventory.models import Node

        Node.objects.update(status="offline")
        if self.production:
            import redis

            client = redis.Redis.from_url(REDIS)
            for key in client.scan_iter(f"{self.prefix}*", count=1000):
                client.delete(key)

    def start(self, processes: int = 1, port: int | None = None) -> str:
        self.port = port or free_port()
        self.log = open(self.tmp / "daphne.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleet.serve", "-b", "127.0.0.1", "-p", str(self.port), "fleet.asgi:application"],
            cwd=ROOT, env={**self.env, "FLEET_WEB_PROCESSES": str(processes)}, stdout=self.log,
            stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "/accounts/login/", timeout=2).close()
                return base
            time.sleep(0.1)
        raise RuntimeError("daphne did not start; see " + str(self.tmp / "daphne.log"))

    def scrape(self) -> tuple[float, float]:
        """(frames accepted so far, seconds the whole /metrics scrape took)."""
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=60) as response:
            body = response.read().decode()
        took = time.perf_counter() - started
        for line in body.splitlines():
            if line.startswith("fleet_telemetry_frames_total "):
                return float(line.split()[1]), took
        return 0.0, took

    def frames(self) -> float:
        url = f"http://127.0.0.1:{self.port}/metrics?name[]=fleet_telemetry_frames_total"
        with urllib.request.urlopen(url, timeout=30) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("fleet_telemetry_frames_total "):
                    return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                for proc in reversed(tree(self.process.pid)):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()

    def drop(self) -> None:
        """Remove the bench database and Redis keys (the run's own)."""
        if not self.production:
            return
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
            self.reset()
            import psycopg

            with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


class Bare:
    """The ceiling: bare_server.py (``websockets``), or with ``daphne=True`` the same work as a plain ASGI
    application on Daphne (daphne_bare.py)."""

    def __init__(self, tmp: Path, daphne: bool = False):
        self.tmp = tmp
        self.daphne = daphne
        self.process: subprocess.Popen | None = None

    def start(self, processes: int = 1, port: int | None = None) -> str:
        self.port = port or free_port()
        self.count_file = self.tmp / ("daphne.count" if self.daphne else "bare.count")
        self.count_file.unlink(missing_ok=True)
        if self.daphne:
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                       "daphne_bare:application"]
            env = {**os.environ, "FLEET_BENCH_COUNT_FILE": str(self.count_file)}
            self.process = subprocess.Popen(command, cwd=ROOT / "bench", env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
            for _ in range(300):
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2).close()
                    return f"http://127.0.0.1:{self.port}"
                time.sleep(0.1)
            raise RuntimeError("daphne did not start")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_server.py"), str(self.port),
                                         str(self.count_file)], cwd=ROOT)
        for _ in range(100):
            if self.count_file.exists():
                return f"http://127.0.0.1:{self.port}"
            time.sleep(0.1)
        raise RuntimeError("bare server did not start")

    def frames(self) -> float:
        return float(self.count_file.read_text().split()[0])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


# ---- readings taken while a phase runs ------------------------------------------------------------------


def fresh(read) -> tuple[float, float]:
    """A counter the server publishes in steps (every 0.1-0.5 s) read just after it stepped, with the
    time: rates from two such reads are not off by a step's worth."""
    first = read()
    deadline = time.time() + 2.0
    while time.time() < deadline:
        time.sleep(0.02)
        value = read()
        if value != first:
            return value, time.time()
    return first, time.time()


def drain(server: Fleet, n: int, limit: float) -> float:
    """Wait (at most ``limit`` s) until the server accepts frames no faster than the agents send them (1 Hz
    each): a backlog queued during the connect is gone. Returns when."""
    deadline = time.time() + limit
    last, at = fresh(server.frames)
    while time.time() < deadline:
        time.sleep(2.0)
        count, now = fresh(server.frames)
        rate, last, at = (count - last) / (now - at), count, now
        if rate <= 1.05 * n:
            break
    return time.time()


async def scrape_twice(server: Fleet, start: float, duration: float) -> list[float]:
    """Seconds each of two /metrics scrapes took, at a quarter and three quarters of the window."""
    took = []
    for at in (start + duration / 4, start + 3 * duration / 4):
        await asyncio.sleep(max(0.0, at - time.time()))
        took.append(await asyncio.to_thread(lambda: server.scrape()[1]))
    return took

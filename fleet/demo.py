"""The embedded demo: SQLite, in-memory channel layer, one Daphne, and a simulated fleet of real agents.

Each simulated node is a real `fleet-agent` process that enrolls through the HTTP API and connects over
the agent websocket, exactly as a real node would; only its GPUs are simulated.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from fleet.accounts import audit
from fleet.accounts.models import Role
from fleet.hub.models import ModelVersion
from fleet.inventory.models import Node, NodeKind
from fleet.inventory.services import authenticate_node, create_enrollment_token
from fleet.lib.errors import FieldError
from fleet.rollouts import services as rollouts
from fleet.rollouts.models import Deployment

DEFAULT_NODES = "h100x8:3,jetson-orin:5"
_SPEC = re.compile(r"^([a-z0-9-]+):(\d{1,3})$")


class DemoError(Exception):
    pass


@dataclass(frozen=True)
class DemoNode:
    name: str
    profile: str

    @property
    def home(self) -> Path:
        return settings.VAR_DIR / "demo" / "agents" / self.name

    @property
    def kind(self) -> str:
        return NodeKind.EDGE_DEVICE if self.profile.startswith("jetson") else NodeKind.GPU_SERVER

    @property
    def labels(self) -> dict[str, str]:
        """``role`` picks the node's deployment; ``zone`` (a, b, a, …) orders a rollout's waves."""
        number = int(self.name.rsplit("-", 1)[1])
        return {"role": DEPLOYMENTS[self.kind][1], "zone": "ab"[(number - 1) % 2]}

    def label_args(self) -> list[str]:
        return [arg for key, value in self.labels.items() for arg in ("--label", f"{key}={value}")]


# node kind → (deployment, the ``role`` label that selects its nodes)
DEPLOYMENTS = {NodeKind.GPU_SERVER: ("chat-default", "chat"), NodeKind.EDGE_DEVICE: ("edge-default", "edge")}


def parse_nodes(spec: str) -> list[DemoNode]:
    """'h100x8:3,jetson-orin:5' → three GPU servers and five edge devices with stable names."""
    nodes: list[DemoNode] = []
    for index, part in enumerate(item.strip() for item in spec.split(",") if item.strip()):
        match = _SPEC.match(part)
        if not match:
            raise DemoError(
                f"FLEET_DEMO_NODES entry {part!r} must look like PROFILE:COUNT, e.g. {DEFAULT_NODES}"
            )
        profile, count = match.group(1), int(match.group(2))
        prefix = "edge" if profile.startswith("jetson") else "gpu" if index == 0 else profile.split("x")[0]
        nodes += [DemoNode(f"{prefix}-{n:02d}", profile) for n in range(1, count + 1)]
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        raise DemoError("FLEET_DEMO_NODES gives two groups the same name prefix; use distinct profiles")
    return nodes


def ensure_admin(stdout) -> None:
    User = get_user_model()
    password = os.environ.get("FLEET_ADMIN_PASSWORD")
    user = User.objects.filter(username="admin").first()
    if user and not password:
        stdout.write("user admin exists (password unchanged; set FLEET_ADMIN_PASSWORD to reset it)")
        return
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    with transaction.atomic():
        user = user or User(username="admin")
        user.role = Role.ADMIN
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        audit.record("demo", "user.create", user, role=Role.ADMIN)
    shown = password if generated else "(from FLEET_ADMIN_PASSWORD)"
    stdout.write(f"login: admin / {shown}")


def _agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleet.agent", *args]


def _agent_env(node: DemoNode) -> dict[str, str]:
    # Eight runtimes share this machine's cores: one torch thread each (more only contend).
    return {"FLEET_RUNTIME_THREADS": "1", **os.environ, "FLEET_AGENT_HOME": str(node.home)}


def enroll_missing(nodes: list[DemoNode], server: str) -> None:
    """Enroll the nodes that have no working credentials yet (a restarted demo reuses its nodes)."""
    missing = []
    for node in nodes:
        path = node.home / "credentials.json"
        if path.exists():
            try:
                secret = json.loads(path.read_text()).get("secret", "")
            except ValueError:
                secret = ""
            if authenticate_node(secret) is not None:
                continue
        missing.append(node)
    if not missing:
        return
    # A demo node whose agent home was wiped: drop the stale record and enroll it afresh.
    Node.objects.filter(name__in=[node.name for node in missing]).delete()
    _, token = create_enrollment_token("demo", ttl=timedelta(minutes=10), uses=len(missing), note="make demo")
    for node in missing:
        node.home.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            _agent_cmd("enroll", "--server", server, "--token", token, "--name", node.name, "--kind", node.kind,
                       *node.label_args()),
            capture_output=True, text=True, timeout=60, env=_agent_env(node),
        )
        if result.returncode != 0:
            raise DemoError(f"enrolling {node.name} failed: {result.stderr.strip() or result.stdout.strip()}")


def ensure_deployments(models: dict[str, ModelVersion], stdout) -> list[Deployment]:
    """The demo's deployments (``chat-default`` on the GPU servers, ``edge-default`` on the edge devices), each
    created once at ``models[kind]``: a restarted demo keeps what an operator has rolled them to. The engine
    converges their nodes (deploy, then activate) as the agents come online. Returns those created; a refused
    one is reported and the demo runs without it."""
    created = []
    for kind, (name, role) in DEPLOYMENTS.items():
        version = models.get(kind)
        if version is None or Deployment.objects.filter(name=name).exists():
            continue
        try:
            created.append(rollouts.create_deployment(
                "demo", name, version.model.repo_id, version, selector={"role": role}))
        except FieldError as error:
            stdout.write(f"deployment {name} left out: {error.field}: {error.message}")
    return created


def wait_for_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the server exited with code {process.returncode}; see the output above")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise DemoError(f"the server did not answer {url} within {timeout:.0f}s")


def ensure_port_free(host: str, port: int) -> None:
    """Refuse to start when something already listens on ``host:port`` (another demo, most likely): its
    server would answer our readiness probe, and our agents would displace that demo's."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise DemoError(f"cannot resolve {host}: {error}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted does: TIME_WAIT is no owner
        try:
            probe.bind(address)
        except OSError as error:
            raise DemoError(f"port {port} on {host} is already in use ({error.strerror}): is another `make demo` "
                            "running? Stop it, or pick another port with FLEET_DEMO_PORT or --port") from None


def server_command(host: str, port: int) -> tuple[list[str], str]:
    """Daphne's command line and where its per-request access log goes: ``var/demo/access.log``, or the
    terminal with FLEET_DEMO_ACCESS_LOG=1."""
    if os.environ.get("FLEET_DEMO_ACCESS_LOG", "").strip().lower() in {"1", "true", "yes", "on"}:
        target = "-"
    else:
        folder = settings.VAR_DIR / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        target = str(folder / "access.log")
    command = [sys.executable, "-m", "fleet.serve", "-b", host, "-p", str(port), "--access-log", target,
               "fleet.asgi:application"]
    return command, target


def server_env() -> dict[str, str]:
    """The server's environment: warnings and errors only on the terminal, unless FLEET_LOG_LEVEL says."""
    return {"FLEET_LOG_LEVEL": "WARNING", **os.environ}


def start_agent(node: DemoNode) -> subprocess.Popen:
    log = open(node.home / "agent.log", "a")  # noqa: SIM115 - the child process keeps it open
    return subprocess.Popen(
        _agent_cmd("run", "--simulate", node.profile, "--runtime", "builtin", *node.label_args()),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_agent_env(node),
    )


def stop_all(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

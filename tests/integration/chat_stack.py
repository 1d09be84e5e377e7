"""A Fleet stack with a real agent serving the tiny Llama through the builtin runtime, for the chat end-to-end
test and `bench/chat.py`: migrated database + Daphne, the tiny model (and optionally a broken copy of it)
imported into the hub and deployed+activated on a real `fleet-agent run --runtime builtin`, an operator
logged in (session cookie for `/ws/chat/`) and an API key with the `chat` scope (for `/v1/`)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import websockets

from fleet.hub.tiny_llama import write_tiny_llama
from tests.integration.harness import Agent, Stack, login_cookie, wait_until

GOOD = "tiny/llama"
BROKEN = "tiny/broken-llama"
NODE = "chat-node"
PASSWORD = "chat-test-password-1"

SETUP = """
import json
from datetime import timedelta
from pathlib import Path
from django.contrib.auth import get_user_model
from fleet.accounts.apikeys import create_api_key
from fleet.hub.importer import import_folder
from fleet.inventory.services import create_enrollment_token
bob = get_user_model().objects.create_user("bob", password=PASSWORD, role="operator")
for folder, repo in MODELS:
    import_folder("test", Path(folder), repo, "v1")
print(json.dumps({"key": create_api_key("test", bob, ["chat"])[1],
                  "token": create_enrollment_token("test", ttl=timedelta(minutes=10))[1]}))
"""

DEPLOY = """
from fleet.hub import commands
from fleet.hub.models import ModelVersion
from fleet.inventory.models import Node
node = Node.objects.get(name=NODE)
for repo in REPOS:
    version = ModelVersion.objects.get(model__repo_id=repo, revision="v1")
    commands.create("test", node, "deploy", version, activate=True, repo=repo)
"""


def broken_copy(folder: Path) -> Path:
    """The tiny model with a config.json whose hidden size does not match its weights: no runtime loads it."""
    write_tiny_llama(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": config["hidden_size"] * 2}))
    return folder


class ChatWorld:
    """Everything one chat test module (or one benchmark run) shares; ``start()`` returns once GOOD is ready."""

    def __init__(self, tmp: Path, *, offline_after: float = 5, with_broken: bool = False,
                 env: dict[str, str] | None = None):
        self.tmp = tmp
        self.stack = Stack(tmp, offline_after=offline_after)
        self.stack.env.update(env or {})
        self.with_broken = with_broken
        self.agent = Agent(tmp / "agent", {**self.stack.env, "FLEET_RUNTIME_THREADS": "1",
                                           # one restart after a crash, then give up (the broken copy)
                                           "FLEET_RUNTIME_MAX_RESTARTS": "1", "FLEET_RUNTIME_BACKOFF_INITIAL": "0.5"})
        self.key = ""
        self.cookie = ""
        self.node_id = 0

    def start(self, ready_timeout: float = 240) -> ChatWorld:
        stack = self.stack.start()
        models = [(str(write_tiny_llama(self.tmp / "tiny")), GOOD)]
        if self.with_broken:
            models.append((str(broken_copy(self.tmp / "broken")), BROKEN))
        code = f"PASSWORD = {PASSWORD!r}\nMODELS = {models!r}\n" + SETUP
        made = json.loads(stack.manage("shell", "-c", code).splitlines()[-1])  # one process: each costs seconds
        self.key = made["key"]
        enrolled = self.agent.cli("enroll", "--server", stack.url(), "--token", made["token"], "--name", NODE)
        assert enrolled.returncode == 0, enrolled.stderr
        self.node_id = stack.query("SELECT id FROM inventory_node WHERE name = ?", (NODE,))[0][0]
        repos = [repo for _, repo in models]
        stack.manage("shell", "-c", f"NODE = {NODE!r}\nREPOS = {repos!r}\n" + DEPLOY)
        self.agent.run("--runtime", "builtin")
        self.cookie = login_cookie(stack.url(), "bob", PASSWORD)
        self.wait_runtime(GOOD, "ready", ready_timeout)
        return self

    def stop(self) -> None:
        self.agent.kill()
        self.stack.stop()

    # ---- what the node reports --------------------------------------------------------------------------

    def runtime(self, repo: str) -> dict[str, Any] | None:
        rows = self.stack.query("SELECT state, reason, port, restarts, log_tail FROM inventory_noderuntime "
                                "WHERE node_id = ? AND repo = ?", (self.node_id, repo))
        if not rows:
            return None
        state, reason, port, restarts, log_tail = rows[0]
        return {"state": state, "reason": reason, "port": port, "restarts": restarts,
                "log_tail": json.loads(log_tail) if isinstance(log_tail, str) else log_tail}

    def wait_runtime(self, repo: str, state: str, timeout: float,
                     also: Callable[[dict[str, Any]], bool] = lambda row: True) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            row = self.runtime(repo)
            return row if row and row["state"] == state and also(row) else None

        try:
            return wait_until(reached, timeout, f"{repo} {state}")
        except AssertionError:
            raise AssertionError(f"{repo} is {self.runtime(repo)}\nagent:\n{self.agent.log()}\n"
                                 f"server:\n{self.stack.logs()}") from None

    def runtime_url(self, repo: str = GOOD) -> str:
        return f"http://127.0.0.1:{self.runtime(repo)['port']}"

    def runtime_pid(self, port: int) -> int:
        """The runtime process listening on ``port``: a child of the agent whose command line names the port."""
        for child in psutil.Process(self.agent.process.pid).children(recursive=True):
            try:
                argv = child.cmdline()
            except psutil.Error:
                continue
            if "--port" in argv and argv[argv.index("--port") + 1] == str(port):
                return child.pid
        raise AssertionError(f"no runtime process of the agent listens on port {port}")


def runtime_stats(base_url: str) -> dict[str, int]:
    """The builtin runtime's own counters (completion_tokens_total, requests_total, requests_active)."""
    with urllib.request.urlopen(f"{base_url}/fleet/stats", timeout=5) as response:
        return json.loads(response.read())


class ChatSocket:
    """A logged-in browser's `/ws/chat/` socket (session cookie and Origin, as the playground page sends)."""

    def __init__(self, base_url: str, cookie: str):
        self.url = base_url.replace("http://", "ws://") + "/ws/chat/"
        self.headers = {"Cookie": cookie, "Origin": base_url}
        self.ws = None

    async def __aenter__(self) -> ChatSocket:
        self.ws = await websockets.connect(self.url, additional_headers=self.headers, open_timeout=10,
                                           max_size=None)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def start(self, request_id: str, content: str, target: dict[str, Any] | None = None,
                    **params: Any) -> None:
        await self.ws.send(json.dumps({"type": "chat.start", "request_id": request_id,
                                       "target": target or {"model": GOOD},
                                       "messages": [{"role": "user", "content": content}], "params": params}))

    async def cancel(self, request_id: str) -> None:
        await self.ws.send(json.dumps({"type": "chat.cancel", "request_id": request_id}))

    async def next(self, timeout: float) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def until_end(self, request_id: str, timeout: float) -> tuple[str, dict[str, Any]]:
        """The text streamed for ``request_id`` and its closing ``chat.done`` / ``chat.error`` frame."""
        deadline = time.monotonic() + timeout
        parts: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            message = await self.next(left)
            if message.get("request_id") != request_id:
                continue
            if message["type"] == "chat.delta":
                parts.append(message["text"])
            elif message["type"] in ("chat.done", "chat.error"):
                return "".join(parts), message
        raise AssertionError(f"chat {request_id} did not end within {timeout}s")

"""A fake node agent that speaks the real agent protocol: hello with a ready runtime, then answers
`chat` frames with scripted deltas. Two transports: channels' WebsocketCommunicator on the real
AgentConsumer (in-process tests) and a real websocket to a Daphne (integration tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

REPO = "fleet-test/tiny-chat"
SHA = "a" * 40


def runtime(repo: str = REPO, sha: str = SHA, state: str = "ready", **fields: Any) -> dict[str, Any]:
    return {"runtime": "builtin", "repo": repo, "sha": sha, "state": state, "port": 18080, **fields}


def hello(serving: list[dict] | None = None, hostname: str = "gpu-01.lan") -> dict[str, Any]:
    return {"type": "hello", "v": 1, "agent_version": "0.1.0", "host": {"hostname": hostname},
            "serving": [runtime()] if serving is None else serving}


Reply = Callable[["FakeAgent", dict], Awaitable[None]]


async def scripted(agent: FakeAgent, frame: dict) -> None:
    """Answer with the words of ``agent.words`` (default: echo the last user message), one per delta."""
    words = agent.words or frame["messages"][-1]["content"].split()
    for index, word in enumerate(words):
        await agent.send({"type": "chat.delta", "v": 1, "request_id": frame["request_id"],
                          "text": word if index == 0 else " " + word})
    await agent.send({"type": "chat.done", "v": 1, "request_id": frame["request_id"], "finish_reason": "stop",
                      "usage": {"prompt_tokens": 7, "completion_tokens": len(words)}})


async def hold(agent: FakeAgent, frame: dict) -> None:
    """One delta, then wait for a cancel and confirm it (or wait forever)."""
    request_id = frame["request_id"]
    await agent.send({"type": "chat.delta", "v": 1, "request_id": request_id, "text": "thinking"})
    await agent.cancelled(request_id).wait()
    await agent.send({"type": "chat.done", "v": 1, "request_id": request_id, "finish_reason": "cancelled",
                      "usage": {"prompt_tokens": 7, "completion_tokens": 1}})


class FakeAgent:
    def __init__(self, serving: list[dict] | None = None, reply: Reply = scripted, words: list[str] | None = None):
        self.serving = serving
        self.reply = reply
        self.words = words
        self.chats: list[dict] = []
        self.cancels: list[str] = []
        self.errors: list[dict] = []
        self.got_chat = asyncio.Event()
        self._cancelled: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.Task | None = None

    # ---- transport (overridden) ----
    async def _open(self) -> None:
        raise NotImplementedError

    async def _recv(self) -> dict:
        raise NotImplementedError

    async def send(self, frame: dict) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    # ---- behaviour ----
    def cancelled(self, request_id: str) -> asyncio.Event:
        return self._cancelled.setdefault(request_id, asyncio.Event())

    async def start(self, hostname: str = "gpu-01.lan") -> FakeAgent:
        await self._open()
        await self.send(hello(self.serving, hostname))
        welcome = await asyncio.wait_for(self._recv(), 10)
        assert welcome["type"] == "welcome", welcome
        self._loop = asyncio.create_task(self._serve())
        return self

    async def _serve(self) -> None:
        while True:
            frame = await self._recv()
            if frame["type"] == "chat":
                self.chats.append(frame)
                self.got_chat.set()
                task = asyncio.create_task(self.reply(self, frame))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif frame["type"] == "chat.cancel":
                self.cancels.append(frame["request_id"])
                self.cancelled(frame["request_id"]).set()
            elif frame["type"] == "ping":
                await self.send({"type": "pong", "v": 1, "nonce": frame.get("nonce", "")})
            elif frame["type"] == "error":
                self.errors.append(frame)

    async def wait_for_chats(self, count: int, timeout: float = 10) -> list[dict]:
        async def enough() -> None:
            while len(self.chats) < count:
                self.got_chat.clear()
                await self.got_chat.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.chats

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._loop] if self._loop else [])]:
            task.cancel()
        with contextlib.suppress(Exception):
            await self._close()


class CommunicatorAgent(FakeAgent):
    """On the real AgentConsumer through channels' test communicator."""

    def __init__(self, secret: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secret = secret

    async def _open(self) -> None:
        from channels.testing import WebsocketCommunicator

        from fleet.asgi import application

        self.comm = WebsocketCommunicator(application, "/ws/agent/",
                                          headers=[(b"authorization", f"Bearer {self.secret}".encode())])
        connected, _ = await self.comm.connect()
        assert connected, "agent handshake refused"

    async def _recv(self) -> dict:
        return await self.comm.receive_json_from(timeout=3600)

    async def send(self, frame: dict) -> None:
        await self.comm.send_json_to(frame)

    async def _close(self) -> None:
        await self.comm.disconnect()


class SocketAgent(FakeAgent):
    """On a real Daphne over a real websocket."""

    def __init__(self, url: str, secret: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url.replace("http://", "ws://") + "/ws/agent/"
        self.secret = secret

    async def _open(self) -> None:
        import websockets

        self.ws = await websockets.connect(self.url, additional_headers={"Authorization": f"Bearer {self.secret}"},
                                           open_timeout=10)

    async def _recv(self) -> dict:
        return json.loads(await self.ws.recv())

    async def send(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))

    async def _close(self) -> None:
        await self.ws.close()

"""TEST-ONLY nodes for the playground browser tests (nothing in `fleet/` imports this): `FakeAgent`s
connect to the real `/ws/agent/` over the real agent protocol (`fleet.agent.protocol`), report a ready
runtime, and answer `chat` frames with a scripted "model" (`scripted_reply`)."""

from __future__ import annotations

import asyncio
import json
import re

SHA_V1 = "1" * 40
SHA_V2 = "2" * 40
REPO = "org/tiny-chat"
XSS_ANSWER = (
    "Here is some HTML: <img src=x onerror=alert(1)> and <script>alert(1)</script>\n\n"
    "An image: ![x](http://example.com/x.png)\n\n"
    "A [safe link](http://example.com/page) and a [bad link](javascript:alert(1)).\n\n"
    '<a href="http://example.com/" onclick="alert(1)">raw anchor</a>\n'
)


def scripted_reply(messages: list[dict], params: dict | None = None) -> tuple[list[str], float]:
    """The fake model: (chunks to stream, seconds between chunks), decided by the last user message.

    "xss" → untrusted markup; "slow" → 400 words at 20/s (time to press Stop); else a markdown echo
    that says which turn this is and the system prompt it saw (so tests can check the context sent)."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    last = users[-1] if users else ""
    if "xss" in last.lower():
        return [XSS_ANSWER[i:i + 12] for i in range(0, len(XSS_ANSWER), 12)], 0.01
    if "slow" in last.lower():
        return [f"word{i} " for i in range(400)], 0.05
    text = (f"You said: **{last}** (turn {len(users)}{', system: ' + system if system else ''})\n\n"
            "- first point\n- second point\n\n```python\nprint('hello')\n```\n")
    chunks = re.findall(r"\S+\s*|\s+", text)
    limit = (params or {}).get("max_tokens")
    return (chunks[:limit] if limit else chunks), 0.03


async def stream_reply(messages: list[dict], params: dict, send_delta) -> tuple[str, int]:
    """Send the scripted chunks through ``send_delta(text)``; (finish_reason, completion tokens)."""
    chunks, delay = scripted_reply(messages, params)
    full, _ = scripted_reply(messages, {})
    for chunk in chunks:
        await asyncio.sleep(delay)
        await send_delta(chunk)
    return ("length" if len(chunks) < len(full) else "stop"), len(chunks)


# ---- fake nodes over the real agent protocol ---------------------------------------
class FakeAgent:
    """A node that serves ``(repo, sha)`` with a ready built-in runtime and answers chats by script."""

    def __init__(self, base_url: str, secret: str, hostname: str, serving: list[tuple[str, str]]):
        self.url = base_url.replace("http://", "ws://") + "/ws/agent/"
        self.secret = secret
        self.hostname = hostname
        self.serving = serving
        self.ws = None
        self.tasks: dict[str, asyncio.Task] = {}
        self.reader: asyncio.Task | None = None

    async def start(self) -> FakeAgent:
        import websockets

        from fleet.agent import protocol as p

        self.ws = await websockets.connect(self.url, additional_headers={"Authorization": f"Bearer {self.secret}"},
                                           open_timeout=10)
        serving = [p.RuntimeStatus(runtime="builtin", repo=repo, sha=sha, state="ready", port=18000)
                   for repo, sha in self.serving]
        await self.ws.send(p.dump(p.Hello(type="hello", agent_version="9.9.9",
                                          host=p.HostFacts(hostname=self.hostname, os="Debian 12", arch="x86_64"),
                                          runtimes=["builtin"],
                                          active=[p.ModelRef(repo=r, sha=s) for r, s in self.serving],
                                          serving=serving)))
        welcome = json.loads(await self.ws.recv())
        assert welcome["type"] == "welcome", welcome
        await self.ws.send(p.dump(p.RuntimeReport(type="runtime", serving=serving)))
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        from fleet.agent import protocol as p

        async for raw in self.ws:
            frame = p.parse_server_frame(raw)
            if frame.type == "ping":
                await self.ws.send(p.dump(p.Pong(type="pong", nonce=frame.nonce)))
            elif frame.type == "chat":
                self.tasks[frame.request_id] = asyncio.ensure_future(self._answer(frame))
            elif frame.type == "chat.cancel" and frame.request_id in self.tasks:
                self.tasks[frame.request_id].cancel()

    async def _answer(self, frame) -> None:
        from fleet.agent import protocol as p

        messages = [m.model_dump() for m in frame.messages]
        params = frame.params.model_dump(exclude_none=True)
        tokens = 0

        async def delta(text: str) -> None:
            nonlocal tokens
            tokens += 1
            await self.ws.send(p.dump(p.ChatDelta(type="chat.delta", request_id=frame.request_id, text=text)))

        finish = "cancelled"
        try:
            finish, _ = await stream_reply(messages, params, delta)
        except asyncio.CancelledError:
            pass
        finally:
            self.tasks.pop(frame.request_id, None)
            await self.ws.send(p.dump(p.ChatDone(type="chat.done", request_id=frame.request_id, finish_reason=finish,
                                                 usage={"prompt_tokens": 7, "completion_tokens": tokens})))

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        if self.reader:
            self.reader.cancel()
        if self.ws:
            await self.ws.close()

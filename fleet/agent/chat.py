"""Chats and health checks relayed from the server to the local runtimes, and runtime reports sent back.

A ``chat`` frame becomes one streamed ``POST /v1/chat/completions`` to the runtime serving its repo; the
answer goes back as ``chat.delta`` frames (deltas arriving within ``COALESCE`` seconds of the previous frame
share one; longer with many chats at once, see DELTA_FRAMES_PER_SECOND), then ``chat.done`` or
``chat.error``. Many chats run at once, each its own task keyed by ``request_id``; ``chat.cancel`` cancels
the task, which closes the HTTP stream, which makes the runtime stop generating. A ``healthcheck`` asks the
runtime serving exactly that repo@sha one question.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from pydantic import BaseModel

from fleet.agent.protocol import (
    Chat,
    ChatCancel,
    ChatDelta,
    ChatDone,
    ChatError,
    CommandEvent,
    HealthCheck,
    RuntimeReport,
)
from fleet.agent.runtimes.process import RuntimeProcess
from fleet.agent.runtimes.supervisor import Supervisor

log = logging.getLogger("fleet.agent.chat")
Send = Callable[[BaseModel], Awaitable[None]]

COALESCE = 0.02  # seconds: at most ~50 delta frames a second per chat, at most this much added latency
# All chats together send at most this many delta frames a second: the server drops an agent's frames past
# FLEET_AGENT_MAX_FRAMES_PER_SECOND (default 200), and metrics, events and reports need room too.
DELTA_FRAMES_PER_SECOND = 100.0
COUNTERS_EVERY = 1.0  # seconds: how often busy-ness changes alone are reported (the log tail rides along)
MAX_DELTA_CHARS = 65536  # ChatDelta.text's bound
HEALTHCHECK_MAX_TOKENS = 128
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def read_timeout() -> float:
    """FLEET_CHAT_READ_TIMEOUT: seconds a runtime may stay silent mid-answer (a long prompt's prefill on a CPU)."""
    try:
        return max(1.0, float(os.environ.get("FLEET_CHAT_READ_TIMEOUT", "300")))
    except ValueError:
        return 300.0


def wire_text(text: str) -> str:
    """What the protocol accepts: no NUL, no lone surrogates."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


class Unavailable(Exception):
    """No runtime can answer; the message says why and what to do."""


class Coalescer:
    """Joins deltas that arrive within ``interval()`` seconds of the last frame sent; order is kept by a lock."""

    def __init__(self, send: Callable[[str], Awaitable[None]], interval: Callable[[], float] = lambda: COALESCE):
        self.send = send
        self.interval = interval
        self.parts: list[str] = []
        self.lock = asyncio.Lock()
        self.last = float("-inf")  # the first delta goes out at once
        self.timer: asyncio.TimerHandle | None = None
        self.flushing: set[asyncio.Task] = set()

    async def add(self, text: str) -> None:
        self.parts.append(text)
        loop = asyncio.get_running_loop()
        wait = self.last + self.interval() - loop.time()
        if wait <= 0:
            await self.flush()
        elif self.timer is None:
            self.timer = loop.call_later(wait, self._flush_soon)

    def _flush_soon(self) -> None:
        self.timer = None
        task = asyncio.create_task(self.flush())
        self.flushing.add(task)
        task.add_done_callback(self.flushing.discard)

    async def flush(self) -> None:
        async with self.lock:
            text, self.parts = "".join(self.parts), []
            self.last = asyncio.get_running_loop().time()
            for start in range(0, len(text), MAX_DELTA_CHARS):
                await self.send(text[start:start + MAX_DELTA_CHARS])

    async def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        await self.flush()


def error_message(response_body: bytes, status: int) -> str:
    try:
        error = json.loads(response_body).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = None
    return str(message or response_body[:300].decode("utf-8", "replace") or f"HTTP {status}")


class ChatRelay:
    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        self.send: Send | None = None
        self.chats: dict[str, asyncio.Task] = {}
        self.background: set[asyncio.Task] = set()
        self.client: httpx2.AsyncClient | None = None
        self.report_timer: asyncio.TimerHandle | None = None
        supervisor.listeners.append(self.runtimes_changed)

    # ---- connection ----------------------------------------------------------------------------------

    def attach(self, send: Send) -> None:
        self.send = send

    def detach(self) -> None:
        """The socket closed: nobody reads the answers any more, so stop generating them."""
        self.send = None
        for task in self.chats.values():
            task.cancel()

    async def close(self) -> None:
        self.detach()
        await asyncio.gather(*self.chats.values(), *self.background, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    async def emit(self, frame: BaseModel) -> None:
        if self.send is None:
            return
        try:
            await self.send(frame)
        except Exception as exc:  # the socket closed; the server notices on its own
            log.debug("could not send %s: %s", frame.__class__.__name__, exc)

    def spawn(self, coroutine: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def http(self) -> httpx2.AsyncClient:
        if self.client is None:
            timeout = httpx2.Timeout(connect=10.0, read=read_timeout(), write=30.0, pool=None)
            self.client = httpx2.AsyncClient(timeout=timeout, trust_env=False,
                                             limits=httpx2.Limits(max_connections=None, max_keepalive_connections=16))
        return self.client

    # ---- runtime reports -----------------------------------------------------------------------------

    def runtimes_changed(self, state_changed: bool) -> None:
        """Report at once when a state changed; counters alone at most every COUNTERS_EVERY seconds."""
        if self.report_timer is not None:
            if not state_changed:
                return
            self.report_timer.cancel()
        loop = asyncio.get_running_loop()
        self.report_timer = loop.call_later(0 if state_changed else COUNTERS_EVERY, self._report)

    def _report(self) -> None:
        self.report_timer = None
        self.spawn(self.emit(RuntimeReport(type="runtime", serving=self.supervisor.statuses())))

    # ---- frames --------------------------------------------------------------------------------------

    async def handle(self, frame: Chat | ChatCancel | HealthCheck) -> None:
        if isinstance(frame, Chat):
            if frame.request_id in self.chats:
                await self.emit(ChatError(type="chat.error", request_id=frame.request_id,
                                          error=f"request_id {frame.request_id!r} is already running; use a new one"))
                return
            task = asyncio.create_task(self.chat(frame))
            self.chats[frame.request_id] = task
            task.add_done_callback(lambda _t, rid=frame.request_id: self.chats.pop(rid, None))
        elif isinstance(frame, ChatCancel):
            task = self.chats.get(frame.request_id)
            if task is None:
                log.debug("chat.cancel for %s: not running", frame.request_id)
                return
            task.cancel()
        elif isinstance(frame, HealthCheck):
            self.spawn(self.healthcheck(frame))

    def require_runtime(self) -> None:
        if self.supervisor.adapter is None:
            raise Unavailable("this node serves no models: its agent runs with --runtime none (restart it with "
                              "--runtime builtin, vllm or llamacpp)")

    def pick(self, repo: str | None) -> RuntimeProcess:
        """The ready runtime for ``repo`` (or the only one); Unavailable says why there is none."""
        self.require_runtime()
        processes = self.supervisor.processes
        if repo is None:
            if not processes:
                raise Unavailable("this node has no active model: deploy and activate one first")
            if len(processes) > 1:
                raise Unavailable(f"this node serves several models ({', '.join(sorted(processes))}): say which repo")
            repo = next(iter(processes))
        process = processes.get(repo)
        if process is None:
            active = ", ".join(sorted(processes)) or "none"
            raise Unavailable(f"{repo} is not active on this node (active: {active}); deploy and activate it first")
        if process.state == "starting":
            raise Unavailable(f"the runtime for {repo} is still starting ({process.reason or 'loading'}); "
                              "try again in a moment")
        if process.state != "ready":
            raise Unavailable(f"the runtime for {repo} is not serving: {process.reason or process.state}")
        return process

    async def chat(self, frame: Chat) -> None:
        rid = frame.request_id
        try:
            process = self.pick(frame.repo)
        except Unavailable as exc:
            await self.emit(ChatError(type="chat.error", request_id=rid, error=str(exc)[:512]))
            return
        body: dict[str, Any] = {
            "model": process.repo, "messages": [message.model_dump() for message in frame.messages],
            "stream": True, "stream_options": {"include_usage": True},
            **frame.params.model_dump(exclude_none=True, exclude_defaults=True)}

        async def send_delta(text: str) -> None:
            await self.emit(ChatDelta(type="chat.delta", request_id=rid, text=text))

        coalescer = Coalescer(send_delta, lambda: max(COALESCE, len(self.chats) / DELTA_FRAMES_PER_SECOND))
        usage: dict[str, int] = {}
        process.begin_request()
        try:
            finish, usage = await self.stream(process, body, coalescer)
            await coalescer.close()
            await self.emit(ChatDone(type="chat.done", request_id=rid, finish_reason=finish, usage=usage))
        except asyncio.CancelledError:
            # chat.cancel, or the socket closed: the HTTP stream is closed by now, so generation stopped.
            await coalescer.close()
            await self.emit(ChatDone(type="chat.done", request_id=rid, finish_reason="cancelled"))
        except Unavailable as exc:
            await coalescer.close()
            await self.emit(ChatError(type="chat.error", request_id=rid, error=str(exc)[:512]))
        finally:
            process.end_request(usage.get("completion_tokens", 0))

    async def stream(self, process: RuntimeProcess, body: dict[str, Any],
                     coalescer: Coalescer) -> tuple[str, dict[str, int]]:
        finish, usage = "stop", {}
        try:
            async with self.http().stream("POST", f"{process.base_url}/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    message = error_message(await response.aread(), response.status_code)
                    raise Unavailable(f"the runtime for {process.repo} refused the request: {message}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise Unavailable(f"the runtime for {process.repo} failed mid-answer: "
                                          f"{error_message(data.encode(), 500)}")
                    if chunk.get("usage"):
                        usage = {key: int(chunk["usage"][key]) for key in USAGE_KEYS if key in chunk["usage"]}
                    for choice in chunk.get("choices") or []:
                        if content := (choice.get("delta") or {}).get("content"):
                            await coalescer.add(wire_text(content))
                        finish = choice.get("finish_reason") or finish
        except httpx2.TimeoutException:
            raise Unavailable(f"the runtime for {process.repo} sent nothing for {read_timeout():g}s; it may be "
                              "overloaded: try again later") from None
        except httpx2.HTTPError as exc:
            raise Unavailable(f"the runtime for {process.repo} cannot be reached ({type(exc).__name__}); it may "
                              "have crashed and is being restarted: try again in a moment") from None
        except ValueError as exc:
            raise Unavailable(f"the runtime for {process.repo} sent something that is not an OpenAI stream: "
                              f"{exc}") from None
        return finish, usage

    # ---- health checks -------------------------------------------------------------------------------

    async def healthcheck(self, frame: HealthCheck) -> None:
        try:
            answer = await asyncio.wait_for(self.ask(frame), frame.timeout)
        except TimeoutError:
            event = CommandEvent(type="event", command_id=frame.command_id, state="failed",
                                 error=f"no answer from {frame.repo}@{frame.sha[:12]} within {frame.timeout:g}s")
        except Unavailable as exc:
            event = CommandEvent(type="event", command_id=frame.command_id, state="failed", error=str(exc)[:512])
        else:
            error = None
            if not answer.strip():
                error = "the model answered with empty text"
            elif frame.expect and frame.expect not in answer:
                error = f"the answer does not contain the expected text {frame.expect[:200]!r}"
            event = CommandEvent(type="event", command_id=frame.command_id, state="failed" if error else "succeeded",
                                 detail=wire_text(answer)[:4096], error=error)
        await self.emit(event)

    async def ask(self, frame: HealthCheck) -> str:
        """Wait until the runtime for exactly repo@sha is ready, then ask it the prompt (greedy)."""
        self.require_runtime()
        while True:
            process = self.supervisor.get(frame.repo)
            if process is None or process.sha != frame.sha:
                serving = f"{process.repo}@{process.sha[:12]}" if process else "nothing for that repo"
                raise Unavailable(f"this node does not serve {frame.repo}@{frame.sha[:12]} (it serves {serving})")
            if process.state == "ready":
                break
            if process.given_up:
                raise Unavailable(f"the runtime for {frame.repo} failed: {process.reason}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.ready.wait(), 0.5)
        body = {"model": frame.repo, "messages": [{"role": "user", "content": frame.prompt}],
                "max_tokens": HEALTHCHECK_MAX_TOKENS, "temperature": 0}
        process.begin_request()
        tokens = 0
        try:
            response = await self.http().post(f"{process.base_url}/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise Unavailable(f"the runtime refused the health check: "
                                  f"{error_message(response.content, response.status_code)}")
            answer = response.json()
            tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
            return str(answer["choices"][0]["message"]["content"] or "")
        except httpx2.HTTPError as exc:
            raise Unavailable(f"the runtime for {frame.repo} cannot be reached ({type(exc).__name__})") from None
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise Unavailable(f"the runtime's answer is not an OpenAI chat completion: {exc}") from None
        finally:
            process.end_request(tokens)

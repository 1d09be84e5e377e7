"""`/ws/chat/`: the playground's chat socket (protocol: docs in the CHAT_PROTOCOL note, summed up here).

client → server: ``chat.start`` (request_id, target, messages, params), ``chat.cancel`` (request_id).
server → client: ``chat.started``, ``chat.delta`` (many), then ``chat.done`` or ``chat.error``; ``error``
for a frame that cannot be parsed. Many requests may run at once; each runs in its own task over its
own relay channel (`fleet.playground.relay`), so one request's deltas never reach another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any, Literal

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fleet import events
from fleet.agent.protocol import ChatMessage, ChatParams
from fleet.playground import access, targets
from fleet.playground.relay import Relay, RelayError, open_chat

log = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
MAX_FRAME_BYTES = 1024 * 1024
MAX_REQUESTS = 8  # in flight on one socket
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ChatTarget(_Frame):
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    node: Annotated[int, Field(ge=1, le=2**53)] | None = None
    sha: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None


class ChatStart(_Frame):
    type: Literal["chat.start"]
    request_id: RequestId
    target: ChatTarget
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=512)]
    params: ChatParams = ChatParams()


class ChatCancelRequest(_Frame):
    type: Literal["chat.cancel"]
    request_id: RequestId


_frames: TypeAdapter = TypeAdapter(Annotated[ChatStart | ChatCancelRequest, Field(discriminator="type")])


def parse_frame(text: str) -> ChatStart | ChatCancelRequest:
    """Validate one browser frame; ValueError with "<field>: <what is wrong>"."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValueError("frame: not valid JSON") from None
    if not isinstance(raw, dict) or raw.get("type") not in ("chat.start", "chat.cancel"):
        raise ValueError("type: must be 'chat.start' or 'chat.cancel'")
    try:
        return _frames.validate_python(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or "frame"
        raise ValueError(f"{field}: {first.get('msg', 'invalid')}") from None


class _Request:
    def __init__(self) -> None:
        self.relay: Relay | None = None
        self.cancelled = False
        self.task: asyncio.Task | None = None


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        self.requests: dict[str, _Request] = {}
        self.control_group: str | None = None
        await self.accept()
        if user is None or not await database_sync_to_async(access.may_chat)(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user = user
        self.control_group = events.user_group(user.pk)
        await self.channel_layer.group_add(self.control_group, self.channel_name)

    async def disconnect(self, code: int) -> None:
        for request in list(self.requests.values()):
            if request.task is not None:
                request.task.cancel()  # its relay cancels the generation on the node
        if self.control_group:
            await self.channel_layer.group_discard(self.control_group, self.channel_name)

    async def user_changed(self, event: dict) -> None:
        await self.close(code=CLOSE_FORBIDDEN)

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.control_group is None:
            return  # refused: closing
        if text_data is None or len(text_data) > MAX_FRAME_BYTES:
            await self.send_json({"type": "error", "detail": "frame: send JSON text of at most 1 MiB"})
            return
        try:
            frame = parse_frame(text_data)
        except ValueError as error:
            await self.send_json({"type": "error", "detail": str(error)})
            return
        if frame.type == "chat.cancel":
            await self._cancel(frame.request_id)
            return
        if frame.request_id in self.requests:
            await self._error(frame.request_id, "request_id: already in use by a request in flight; pick another")
            return
        if len(self.requests) >= MAX_REQUESTS:
            await self._error(frame.request_id, f"at most {MAX_REQUESTS} requests at once on one connection; "
                                                "wait for one to finish or cancel it")
            return
        if frame.target.model is None and frame.target.node is None:
            await self._error(frame.request_id, "target: give a model, a node, or both")
            return
        request = _Request()
        self.requests[frame.request_id] = request
        request.task = asyncio.create_task(self._run(frame, request))

    async def _cancel(self, request_id: str) -> None:
        request = self.requests.get(request_id)
        if request is None:
            return  # already finished: its done/error frame is on its way or sent
        request.cancelled = True
        if request.relay is not None:
            await request.relay.cancel()

    async def _error(self, request_id: str, message: str) -> None:
        await self.send_json({"type": "chat.error", "request_id": request_id, "error": message})

    async def _run(self, frame: ChatStart, request: _Request) -> None:
        request_id = frame.request_id
        chat = {"messages": [m.model_dump() for m in frame.messages],
                "params": frame.params.model_dump(exclude_none=True)}
        try:
            try:
                found = await database_sync_to_async(targets.candidates)(
                    frame.target.model, frame.target.sha, frame.target.node)
            except targets.NoTarget as refused:
                await self._error(request_id, refused.message)
                return
            if request.cancelled:
                await self.send_json({"type": "chat.done", "request_id": request_id, "finish_reason": "cancelled",
                                      "usage": {}, "ttft_ms": None, "tokens_per_s": None})
                return
            request.relay = relay = await open_chat(found, chat)
            if request.cancelled:
                await relay.cancel()
            target = relay.target
            await self.send_json({"type": "chat.started", "request_id": request_id,
                                  "node": {"id": target.node_id, "name": target.node_name},
                                  "model": target.repo, "sha": target.sha, "revision": target.revision})
            await self._stream(request_id, relay)
        except RelayError as error:
            await self._error(request_id, error.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("chat %s failed", request_id)
            await self._error(request_id, "the server failed on this request; try again")
        finally:
            self.requests.pop(request_id, None)
            if request.relay is not None:
                await asyncio.shield(request.relay.aclose())

    async def _stream(self, request_id: str, relay: Relay) -> None:
        started = time.monotonic()
        first: float | None = None
        async for event in relay:
            if event["type"] == "chat.delta":
                if first is None:
                    first = time.monotonic()
                await self.send_json({"type": "chat.delta", "request_id": request_id, "text": event["text"]})
            elif event["type"] == "chat.done":
                await self.send_json({"type": "chat.done", "request_id": request_id,
                                      **_done_stats(event, started, first, time.monotonic())})
            else:
                await self._error(request_id, event["error"])


def _done_stats(event: dict[str, Any], started: float, first: float | None, ended: float) -> dict[str, Any]:
    usage = event.get("usage") or {}
    completion = usage.get("completion_tokens")
    tokens_per_s = None
    if first is not None and completion and ended > first:
        tokens_per_s = round(completion / (ended - first), 2)
    return {
        "finish_reason": event.get("finish_reason") or "stop",
        "usage": {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": completion},
        "ttft_ms": round((first - started) * 1000, 1) if first is not None else None,
        "tokens_per_s": tokens_per_s,
    }

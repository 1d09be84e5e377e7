"""The OpenAI-compatible fleet gateway: `GET /v1/models`, `POST /v1/chat/completions` (SSE or not).

Auth: ``Authorization: Bearer <API key with the chat scope>``; a key's model allow-list is honoured.
A request goes to the least-busy online node whose runtime for the model is ready (`targets`) over
the same relay as the playground socket (`relay`). When a streaming client goes away, Django's ASGI
handler cancels the response task and closes the generator: its ``finally`` cancels the generation
on the node. Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from fleet.accounts.apikeys import authenticate_api_key
from fleet.accounts.models import ApiKey
from fleet.playground import ratelimit, targets
from fleet.playground.openai_api import ChatRequest, GatewayError, chunk, completion, parse_chat_request, sse
from fleet.playground.relay import Relay, RelayError, open_chat
from fleet.telemetry import gateway_stats

log = logging.getLogger(__name__)

NO_NODE_RETRY_AFTER = 5  # seconds: runtimes report readiness on every change, so a retry soon may succeed
KEY_HELP = ("send 'Authorization: Bearer <API key with the chat scope>' (create one on the API keys page, or "
            "with: python manage.py createapikey --user U --scope chat)")


async def _authenticate(request: HttpRequest) -> ApiKey:
    scheme, _, plaintext = request.headers.get("Authorization", "").partition(" ")
    plaintext = plaintext.strip() if scheme.lower() == "bearer" else ""
    if not plaintext:
        raise GatewayError(401, f"Missing API key: {KEY_HELP}", code="missing_api_key")
    key = await sync_to_async(authenticate_api_key)(plaintext, "chat")
    if key is None:
        raise GatewayError(401, "Invalid API key: unknown, revoked, expired, or without the chat scope; "
                                f"{KEY_HELP}", code="invalid_api_key")
    return key


def _allowed(key: ApiKey, requested: str, repo: str | None = None) -> bool:
    allowed = key.allowed_models or []
    return not allowed or requested in allowed or (repo is not None and repo in allowed)


def _method_not_allowed(allowed: str) -> JsonResponse:
    error = GatewayError(405, f"method not allowed; use {allowed}", code="method_not_allowed")
    response = error.response()
    response["Allow"] = allowed
    return response


def _listed_models(key: ApiKey) -> list[dict[str, Any]]:
    return [{"id": name, "object": "model", "created": 0, "owned_by": "fleet"} for name in targets.served_models()
            if not key.allowed_models or _allowed(key, name, targets.resolve_model(name)[0])]


@csrf_exempt
async def models_view(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        key = await _authenticate(request)
    except GatewayError as error:
        return error.response()
    data = await sync_to_async(_listed_models)(key)
    return JsonResponse({"object": "list", "data": data})


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    started = time.monotonic()
    label = gateway_stats.UNKNOWN_MODEL
    try:
        key = await _authenticate(request)
        wait = ratelimit.take(key.pk)
        if wait:
            raise GatewayError(429, f"Rate limit reached for this API key; retry in {math.ceil(wait)} s",
                               code="rate_limit_exceeded", headers={"Retry-After": str(math.ceil(wait))})
        chat = parse_chat_request(request.body)
        repo = (await sync_to_async(targets.resolve_model)(chat.model))[0]
        if not _allowed(key, chat.model, repo):
            raise GatewayError(403, f"model: this API key may not use {chat.model!r}; its models are "
                                    f"{', '.join(key.allowed_models)}", param="model", code="model_not_allowed")
        try:
            found = await sync_to_async(targets.candidates)(chat.model)
        except targets.NoTarget as refused:
            raise _no_target(refused) from None
        label = chat.model
        try:
            relay = await open_chat(found, {"messages": chat.messages, "params": chat.params})
        except RelayError as error:
            raise GatewayError(503, error.message, code="no_ready_node",
                               headers={"Retry-After": str(NO_NODE_RETRY_AFTER)}) from None
    except GatewayError as error:
        await gateway_stats.record(label, error.status, error=error.code, duration_s=time.monotonic() - started)
        return error.response()
    if chat.stream:
        stream = _stream(chat, relay, started)
        weakref.finalize(stream, _release_unstarted, relay, asyncio.get_running_loop())
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each chunk on at once
        return response
    return await _collect(chat, relay, started)


_releasing: set[asyncio.Task] = set()


def _release_unstarted(relay: Relay, loop: asyncio.AbstractEventLoop) -> None:
    """A client that leaves between the view's return and the first chunk: the generator never ran, so
    its ``finally`` never will; release (and cancel) the request when the generator is collected. The
    collection may run on any thread (a garbage collection starts wherever an allocation trips it, a
    sync_to_async worker's too): the release goes to the view's event loop."""
    if relay.finished and not relay.counted:
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _start_release(relay)
        return
    try:
        loop.call_soon_threadsafe(_start_release, relay)
    except RuntimeError:
        pass  # that loop is closed: nothing left to release on it


def _start_release(relay: Relay) -> None:
    task = asyncio.get_running_loop().create_task(relay.aclose())
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)


def _no_target(refused: targets.NoTarget) -> GatewayError:
    if refused.code == "model_not_found":
        return GatewayError(404, refused.message, param="model", code="model_not_found")
    if refused.code == "no_ready_node":
        return GatewayError(503, refused.message, code="no_ready_node",
                            headers={"Retry-After": str(NO_NODE_RETRY_AFTER)})
    return GatewayError(400, refused.message, param="model", code=refused.code)


class _Tally:
    """What one request did, recorded once when it ends (never per token)."""

    def __init__(self, chat: ChatRequest, started: float) -> None:
        self.model = chat.model
        self.started = started
        self.first: float | None = None
        self.status = 200
        self.error: str | None = None
        self.usage: dict[str, Any] = {}

    def token(self) -> None:
        if self.first is None:
            self.first = time.monotonic()

    async def record(self) -> None:
        await gateway_stats.record(
            self.model, self.status, error=self.error,
            prompt_tokens=int(self.usage.get("prompt_tokens") or 0),
            completion_tokens=int(self.usage.get("completion_tokens") or 0),
            duration_s=time.monotonic() - self.started,
            ttft_s=None if self.first is None else self.first - self.started,
        )


def _fingerprint(relay: Relay) -> str:
    return f"fleet-{relay.target.sha[:12]}"


async def _collect(chat: ChatRequest, relay: Relay, started: float) -> HttpResponse:
    tally = _Tally(chat, started)
    parts: list[str] = []
    try:
        async for event in relay:
            if event["type"] == "chat.delta":
                tally.token()
                parts.append(event["text"])
            elif event["type"] == "chat.done":
                tally.usage = event.get("usage") or {}
                return JsonResponse(completion(chat, chat.model, "".join(parts), event, _fingerprint(relay)))
            else:
                tally.status, tally.error = 502, "node_failed"
                return GatewayError(502, event["error"], code="node_failed").response()
        tally.status, tally.error = 502, "node_failed"
        return GatewayError(502, "the node ended the answer without finishing it", code="node_failed").response()
    except asyncio.CancelledError:
        tally.status, tally.error = 499, "client_disconnected"
        raise
    finally:
        await asyncio.shield(relay.aclose())
        await asyncio.shield(tally.record())


async def _stream(chat: ChatRequest, relay: Relay, started: float) -> AsyncIterator[bytes]:
    tally = _Tally(chat, started)
    fingerprint = _fingerprint(relay)
    try:
        yield chunk(chat, chat.model, fingerprint, delta={"role": "assistant", "content": ""})
        async for event in relay:
            if event["type"] == "chat.delta":
                tally.token()
                yield chunk(chat, chat.model, fingerprint, delta={"content": event["text"]})
            elif event["type"] == "chat.done":
                tally.usage = event.get("usage") or {}
                finish = event.get("finish_reason")
                yield chunk(chat, chat.model, fingerprint, finish=finish if finish in ("length",) else "stop")
                if chat.include_usage:
                    yield chunk(chat, chat.model, fingerprint, usage=tally.usage)
            else:
                tally.status, tally.error = 502, "node_failed"
                yield sse(GatewayError(502, event["error"], code="node_failed").body())
        yield sse("[DONE]")
    except (asyncio.CancelledError, GeneratorExit):
        tally.status, tally.error = 499, "client_disconnected"  # nginx's code for a client that left
        raise
    finally:
        await asyncio.shield(relay.aclose())
        await asyncio.shield(tally.record())

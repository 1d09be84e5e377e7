"""OpenAI wire format for the gateway: request validation, error bodies, response and chunk shapes."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.http import JsonResponse
from pydantic import ValidationError

from fleet.agent.protocol import ChatMessage, ChatParams
from fleet.lib.openai_chat import ChatCompletionRequest, ChatRequestError, parse_chat_completion

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_MESSAGES = 512
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs", "response_format", "audio",
               "modalities")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 429: "rate_limit_error"}


class GatewayError(Exception):
    """A refused request; becomes ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def bad(param: str, message: str) -> GatewayError:
    return GatewayError(400, f"{param}: {message}", param=param, code="invalid_value")


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def _check_messages(messages: list[dict[str, str]]) -> None:
    """The protocol's limits: how many messages, how long each may be."""
    if len(messages) > MAX_MESSAGES:
        raise bad("messages", f"at most {MAX_MESSAGES} messages")
    for index, message in enumerate(messages):
        try:
            ChatMessage.model_validate(message)
        except ValidationError as error:
            raise bad(f"messages[{index}].content", error.errors(include_url=False)[0]["msg"]) from None


def _params(chat: ChatCompletionRequest) -> dict[str, Any]:
    """The sampling fields within the protocol's ChatParams bounds, which a node enforces too."""
    params = {"temperature": chat.temperature, "top_p": chat.top_p, "max_tokens": chat.max_tokens,
              "stop": chat.stop, "seed": chat.seed}
    try:
        return ChatParams.model_validate(params).model_dump(exclude_none=True)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        loc = first.get("loc", ())
        name = str(loc[0]) if loc else "body"
        raise bad(chat.max_tokens_param if name == "max_tokens" else name, first.get("msg", "invalid")) from None


def parse_chat_request(raw_body: bytes) -> ChatRequest:
    """Validate a /v1/chat/completions body. Raises GatewayError (400 naming the field, 413)."""
    if len(raw_body) > MAX_BODY_BYTES:
        raise GatewayError(413, f"request body over {MAX_BODY_BYTES // (1024 * 1024)} MiB", code="body_too_large")
    try:
        body = json.loads(raw_body or b"null")
    except ValueError:
        raise GatewayError(400, "body: not valid JSON", code="invalid_json") from None
    for name in UNSUPPORTED if isinstance(body, dict) else ():  # before messages: tools come with tool roles
        if body.get(name) not in (None, [], {}):
            raise bad(name, "not supported by the fleet gateway; leave it out")
    try:
        chat = parse_chat_completion(body)
    except ChatRequestError as error:
        raise GatewayError(error.status, error.message, param=error.param, code=error.code) from None
    _check_messages(chat.messages)
    return ChatRequest(model=chat.model, messages=chat.messages, params=_params(chat), stream=chat.stream,
                       include_usage=chat.include_usage)


def usage_block(usage: dict[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(value: str | None) -> str:
    return value if value in ("stop", "length", "content_filter") else "stop"


def completion(request: ChatRequest, model: str, text: str, done: dict[str, Any], fingerprint: str) -> dict:
    return {
        "id": request.id, "object": "chat.completion", "created": request.created, "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason(done.get("finish_reason")), "logprobs": None}],
        "usage": usage_block(done.get("usage") or {}),
    }


def chunk(request: ChatRequest, model: str, fingerprint: str, delta: dict[str, Any] | None = None,
          finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": request.id, "object": "chat.completion.chunk", "created": request.created, "model": model,
        "system_fingerprint": fingerprint,
        "choices": [] if usage is not None else [{"index": 0, "delta": delta or {}, "finish_reason": finish,
                                                  "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage_block(usage)
    return sse(body)


def sse(body: dict[str, Any] | str) -> bytes:
    data = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return f"data: {data}\n\n".encode()

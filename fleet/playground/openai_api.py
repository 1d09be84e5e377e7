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

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_MESSAGES = 512
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
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


def _content(value: Any, index: int) -> str:
    """A message's content: a string, or a list of text parts (images and audio are not served)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part_index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"messages[{index}].content[{part_index}]", "only text parts "
                          "({\"type\": \"text\", \"text\": ...}) are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"messages[{index}].content", "must be a string or a list of text parts")


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise bad("messages", "must be a non-empty list of {\"role\", \"content\"} objects")
    if len(raw) > MAX_MESSAGES:
        raise bad("messages", f"at most {MAX_MESSAGES} messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise bad(f"messages[{index}]", "must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"messages[{index}].role", f"must be one of system, developer, user, assistant (got {role!r})")
        content = _content(message.get("content"), index)
        try:
            ChatMessage(role=ROLES[role], content=content)
        except ValidationError as error:
            raise bad(f"messages[{index}].content", error.errors(include_url=False)[0]["msg"]) from None
        messages.append({"role": ROLES[role], "content": content})
    return messages


def _params(body: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in ("temperature", "top_p", "seed"):
        if body.get(name) is not None:
            params[name] = body[name]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        params["stop"] = [stop] if isinstance(stop, str) else stop
    for name, value in params.items():
        if isinstance(value, bool) or (name != "stop" and not isinstance(value, int | float)):
            raise bad(_param_name(name, body), "must be a number")
    try:
        return ChatParams.model_validate(params).model_dump(exclude_none=True)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        loc = first.get("loc", ())
        name = _param_name(str(loc[0]), body) if loc else "body"
        raise bad(name, first.get("msg", "invalid")) from None


def _param_name(name: str, body: dict[str, Any]) -> str:
    if name == "max_tokens" and "max_completion_tokens" in body:
        return "max_completion_tokens"
    return name


def parse_chat_request(raw_body: bytes) -> ChatRequest:
    """Validate a /v1/chat/completions body. Raises GatewayError (400) naming the field."""
    if len(raw_body) > MAX_BODY_BYTES:
        raise GatewayError(413, f"request body over {MAX_BODY_BYTES // (1024 * 1024)} MiB", code="body_too_large")
    try:
        body = json.loads(raw_body or b"null")
    except ValueError:
        raise GatewayError(400, "body: not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "body: must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 200:
        raise bad("model", "required: a model id from GET /v1/models (1 to 200 characters)")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise bad(name, "not supported by the fleet gateway; leave it out")
    n = body.get("n")
    if n is not None and n != 1:
        raise bad("n", "only n=1 is supported")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream", "must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options", "must be an object such as {\"include_usage\": true}")
    return ChatRequest(model=model, messages=_messages(body.get("messages")), params=_params(body),
                       stream=stream, include_usage=bool(options.get("include_usage")))


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

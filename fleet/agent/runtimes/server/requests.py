"""Validation of ``POST /v1/chat/completions`` bodies (OpenAI names): pure Python, no torch.

Bad input raises :class:`ApiError`, which the HTTP layer turns into OpenAI's error shape with the offending
field in ``param``. Fields OpenAI clients send that a single-sequence runtime ignores (``frequency_penalty``,
``user``, ...) are accepted and ignored, as vLLM does; ``min_tokens`` is vLLM's extension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ROLES = {"system", "user", "assistant", "developer"}
MAX_STOP = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


def _number(body: dict[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, f"must be a number from {low:g} to {high:g}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise _bad(name, f"must be {bound} and at most {high:g}, got {value!r}")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise _bad(name, f"must be from {low} to {high}, got {value}")
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": "..."}]
        parts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{where}.content[{index}]", "only text parts ({\"type\": \"text\", \"text\": ...}) "
                                                         "are supported by this model")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"{where}.content", "must be a string or a list of text parts")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "must be a non-empty list of {\"role\", \"content\"} objects")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(where, "must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", f"must be one of {', '.join(sorted(ROLES))}, got {role!r}")
        messages.append({"role": "system" if role == "developer" else role,
                         "content": _content(message.get("content"), where)})
    return messages


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop", "must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP:
        raise _bad("stop", f"at most {MAX_STOP} stop sequences, got {len(stops)}")
    return stops


def parse_chat_request(body: Any, served_name: str, context: int) -> ChatRequest:
    """Validate a decoded JSON body; ``context`` bounds ``max_tokens``. Raises ApiError (400/404)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", param=None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", f"required: the served model name ({served_name!r})")
    if model != served_name:
        raise ApiError(404, f"The model `{model}` does not exist. This runtime serves {served_name!r}.",
                       param="model", code="model_not_found")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _bad("stream_options", "must be an object like {\"include_usage\": true}")
    n = _integer(body, "n", 1, 1)  # noqa: F841 - validated: one choice only
    max_tokens = _integer(body, "max_completion_tokens", 1, context)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, context)
    min_tokens = _integer(body, "min_tokens", 0, context) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise _bad("min_tokens", f"must not exceed max_tokens ({max_tokens})")
    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        stream=bool(stream),
        include_usage=bool(options.get("include_usage", False)),
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1, low_open=True),
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        stop=_stop(body.get("stop")),
        seed=_integer(body, "seed", -(2**63), 2**64 - 1),
    )

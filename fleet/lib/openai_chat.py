"""The body of an OpenAI ``POST /v1/chat/completions`` request, validated: pure Python, no Django, no torch.

Both servers that speak OpenAI's chat API share it: the node's builtin runtime
(``fleet.agent.runtimes.server.requests``) and the Fleet gateway (``fleet.playground.openai_api``). It checks
only what OpenAI itself defines (types, ranges, at most 4 stop sequences, one choice); each caller adds its
own policy on top (which model it serves, token and size limits) and maps :class:`ChatRequestError` to its
own OpenAI error response. Fields it does not know (``frequency_penalty``, ``user``, ...) are ignored, as
vLLM does, so callers may read their own extensions (``min_tokens``) from the same body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_MODEL_NAME = 200
MAX_STOP = 4
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SEED_RANGE = (-(2**63), 2**64 - 1)


class ChatRequestError(Exception):
    """A refused body: ``status`` (400), ``message`` starting with the field's name, ``param`` and ``code``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class ChatCompletionRequest:
    """A valid body; ``messages`` hold plain-text content, ``developer`` already turned into ``system``."""

    model: str
    messages: list[dict[str, str]]
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # the field it came from: errors about it name that one
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


def bad(param: str, message: str) -> ChatRequestError:
    return ChatRequestError(400, f"{param}: {message}", param=param, code="invalid_value")


def number_field(body: dict[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    """``body[name]`` as a finite number in [low, high] (``(low, high]`` if ``low_open``); None if absent."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(name, f"must be a number from {low:g} to {high:g}, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise bad(name, f"must be {bound} and at most {high:g}, got {value!r}")
    return float(value)


def integer_field(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    """``body[name]`` as a whole number in [low, high] (no upper bound if ``high`` is None); None if absent."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"must be a whole number, got {value!r}")
    if high is None and value < low:
        raise bad(name, f"must be at least {low}, got {value}")
    if high is not None and not low <= value <= high:
        raise bad(name, f"must be from {low} to {high}, got {value}")
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": "..."}]; images and audio are not served
        parts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content[{index}]",
                          "only text parts ({\"type\": \"text\", \"text\": ...}) are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"{where}.content", "must be a string or a list of text parts")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad("messages", "must be a non-empty list of {\"role\", \"content\"} objects")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad(where, "must be an object with role and content")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad(f"{where}.role", f"must be one of {', '.join(ROLES)} (got {role!r})")
        messages.append({"role": ROLES[role], "content": _content(message.get("content"), where)})
    return messages


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) and stop for stop in stops):
        raise bad("stop", "must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP:
        raise bad("stop", f"at most {MAX_STOP} stop sequences, got {len(stops)}")
    return stops


def _max_tokens(body: dict[str, Any], limit: int | None) -> tuple[int | None, str]:
    """``max_completion_tokens`` (OpenAI's current name) wins over the older ``max_tokens``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = integer_field(body, name, 1, limit)
        if value is not None:
            return value, name
    return None, "max_tokens"


def parse_chat_completion(body: Any, *, model_help: str = "a model id from GET /v1/models",
                          max_tokens_limit: int | None = None) -> ChatCompletionRequest:
    """Validate a decoded JSON body. ``model_help`` says what a missing model should be; ``max_tokens_limit``
    bounds ``max_tokens``. Raises :class:`ChatRequestError` (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise ChatRequestError(400, "body: must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= MAX_MODEL_NAME:
        raise bad("model", f"required: {model_help} (1 to {MAX_MODEL_NAME} characters)")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise bad("n", f"only n=1 is supported, got {n!r}")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise bad("stream_options", "must be an object such as {\"include_usage\": true}")
    max_tokens, max_tokens_param = _max_tokens(body, max_tokens_limit)
    return ChatCompletionRequest(
        model=model,
        messages=_messages(body.get("messages")),
        stream=bool(stream),
        include_usage=bool(options.get("include_usage", False)),
        temperature=number_field(body, "temperature", 0, 2),
        top_p=number_field(body, "top_p", 0, 1, low_open=True),
        max_tokens=max_tokens,
        max_tokens_param=max_tokens_param,
        stop=_stop(body.get("stop")),
        seed=integer_field(body, "seed", *SEED_RANGE),
    )

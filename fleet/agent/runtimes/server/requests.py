"""Validation of ``POST /v1/chat/completions`` bodies for the builtin runtime: pure Python, no torch.

The OpenAI fields are checked by :mod:`fleet.lib.openai_chat` (shared with the gateway); this adds the
runtime's own policy: the model must be the one it serves (404), ``max_tokens`` fits the model's context,
and vLLM's ``min_tokens`` extension. Bad input raises :class:`ApiError`, which the HTTP layer turns into
OpenAI's error shape with the offending field in ``param``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from fleet.lib.openai_chat import ChatCompletionRequest, ChatRequestError, bad, integer_field, parse_chat_completion


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.code = code

    @classmethod
    def of(cls, error: ChatRequestError) -> ApiError:
        return cls(error.status, error.message, param=error.param, code=error.code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest(ChatCompletionRequest):
    min_tokens: int = 0  # vLLM's extension: no end of sequence before this many tokens


def parse_chat_request(body: Any, served_name: str, context: int) -> ChatRequest:
    """Validate a decoded JSON body; ``context`` bounds ``max_tokens``. Raises ApiError (400/404)."""
    try:
        chat = parse_chat_completion(body, model_help=f"the served model name ({served_name!r})",
                                     max_tokens_limit=context)
        min_tokens = integer_field(body, "min_tokens", 0, context) or 0
        if chat.max_tokens is not None and min_tokens > chat.max_tokens:
            raise bad("min_tokens", f"must not exceed {chat.max_tokens_param} ({chat.max_tokens})")
    except ChatRequestError as error:
        raise ApiError.of(error) from None
    if chat.model != served_name:
        raise ApiError(404, f"The model `{chat.model}` does not exist. This runtime serves {served_name!r}.",
                       param="model", code="model_not_found")
    return ChatRequest(**{f.name: getattr(chat, f.name) for f in fields(chat)}, min_tokens=min_tokens)

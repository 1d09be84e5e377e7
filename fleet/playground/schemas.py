"""What the history API accepts: validated once by pydantic, errors keyed by the field's dotted path."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet.agent.protocol import ChatParams, Text

MAX_CONTENT = 200_000
MAX_SYSTEM_PROMPT = 20_000
Sha = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
Ms = Annotated[float, Field(ge=0, le=86_400_000)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)


class Target(_In):
    """Who answers: the chat socket's target object (`/ws/chat/` protocol)."""

    model: Text(200, min_length=1) | None = None
    node: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    sha: Sha | None = None

    @model_validator(mode="after")
    def _complete(self) -> Target:
        if self.model is None and self.node is None:
            raise ValueError("choose a model or a node")
        if self.sha is not None and self.model is None:
            raise ValueError("a sha needs the model (repo) it belongs to")
        return self


class ConversationIn(_In):
    title: Text(200) = ""
    mode: Literal["chat", "compare"] = "chat"
    target: Target
    target_b: Target | None = None
    system_prompt: Text(MAX_SYSTEM_PROMPT) = ""
    params: ChatParams = ChatParams()

    @model_validator(mode="after")
    def _lanes(self) -> ConversationIn:
        if self.mode == "compare" and self.target_b is None:
            raise ValueError("target_b: compare mode needs a second target")
        if self.mode == "chat" and self.target_b is not None:
            raise ValueError("target_b: only compare mode has a second target")
        return self


class ConversationPatch(_In):
    title: Text(200) | None = None
    target: Target | None = None
    target_b: Target | None = None
    system_prompt: Text(MAX_SYSTEM_PROMPT) | None = None
    params: ChatParams | None = None


class UserMessageIn(_In):
    role: Literal["user"]
    content: Text(MAX_CONTENT, min_length=1)
    # Edit and resend: this earlier user message takes the new content and everything after it goes.
    replaces: Annotated[int, Field(ge=1)] | None = None


class AnsweredBy(_In):
    id: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    name: Text(128) = ""


class Usage(_In):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    completion_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None


class AssistantMessageIn(_In):
    role: Literal["assistant"]
    lane: Literal["a", "b"] = "a"
    content: Text(MAX_CONTENT) = ""
    node: AnsweredBy | None = None
    model: Text(200) = ""
    sha: Annotated[str, Field(pattern=r"^([0-9a-f]{40})?$")] = ""
    revision: Text(128) | None = None
    finish_reason: Literal["stop", "length", "cancelled", "error"]
    error: Text(512) = ""
    ttft_ms: Ms | None = None
    tokens_per_s: Annotated[float, Field(ge=0, le=1_000_000)] | None = None
    usage: Usage = Usage()


class Truncate(_In):
    after: Annotated[int, Field(ge=1)]


FRIENDLY = {
    "string_pattern_mismatch": "must be a full commit sha: 40 lowercase hex characters",
    "extra_forbidden": "unknown field: remove it",
    "missing": "required",
}


def field_errors(error: ValidationError) -> dict[str, str]:
    """``{"params.temperature": "Input should be less than or equal to 2"}`` — the path names the field."""
    errors: dict[str, str] = {}
    for item in error.errors():
        # Union members and validators add parts such as "function-after[...]": keep field names and indexes.
        path = [str(part) for part in item["loc"] if isinstance(part, int) or part.isidentifier()]
        message = FRIENDLY.get(item["type"], item["msg"].removeprefix("Value error, "))
        if ": " in message and not path and message.split(": ", 1)[0].isidentifier():
            field, message = message.split(": ", 1)
            path = [field]
        errors.setdefault(".".join(path) or "body", message)
    return errors

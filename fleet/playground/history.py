"""Conversation history: each user's own conversations and their messages (validated input only)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from fleet.inventory.models import Node
from fleet.playground.models import Conversation, ConversationMode, Message, MessageRole
from fleet.playground.schemas import AssistantMessageIn, ConversationIn, ConversationPatch, UserMessageIn

TITLE_LENGTH = 80


class HistoryError(Exception):
    """A request that is valid JSON but does not fit the conversation's state (HTTP 409)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def conversations_of(user: Any) -> QuerySet[Conversation]:
    """The user's conversations, newest activity first, with their message count (one query)."""
    return Conversation.objects.filter(owner=user).annotate(message_count=Count("messages")).order_by(
        "-updated_at", "-id"
    )


def _dump_target(target) -> dict | None:
    return target.model_dump(exclude_none=True) if target is not None else None


def create_conversation(user: Any, data: ConversationIn) -> Conversation:
    return Conversation.objects.create(
        owner=user,
        title=data.title.strip(),
        mode=data.mode,
        target=_dump_target(data.target),
        target_b=_dump_target(data.target_b),
        system_prompt=data.system_prompt,
        params=data.params.model_dump(exclude_defaults=True),
    )


def update_conversation(conversation: Conversation, data: ConversationPatch) -> Conversation:
    if data.target_b is not None and conversation.mode != ConversationMode.COMPARE:
        raise HistoryError("target_b", "only compare conversations have a second target")
    if data.title is not None:
        conversation.title = data.title.strip()
    if data.target is not None:
        conversation.target = _dump_target(data.target)
    if data.target_b is not None:
        conversation.target_b = _dump_target(data.target_b)
    if data.system_prompt is not None:
        conversation.system_prompt = data.system_prompt
    if data.params is not None:
        conversation.params = data.params.model_dump(exclude_defaults=True)
    conversation.save()
    return conversation


def _touch(conversation: Conversation, **fields: Any) -> None:
    fields["updated_at"] = timezone.now()
    Conversation.objects.filter(pk=conversation.pk).update(**fields)
    for name, value in fields.items():
        setattr(conversation, name, value)


@transaction.atomic
def add_user_message(conversation: Conversation, data: UserMessageIn) -> Message:
    """Append the user's turn; with ``replaces``, edit that earlier turn and drop everything after it."""
    if data.replaces is not None:
        edited = conversation.messages.filter(pk=data.replaces, role=MessageRole.USER).first()
        if edited is None:
            raise HistoryError("replaces", f"message {data.replaces} is not a user message of this conversation")
        conversation.messages.filter(pk__gte=edited.pk).delete()
    message = Message.objects.create(conversation=conversation, role=MessageRole.USER, content=data.content)
    fields: dict[str, Any] = {}
    if not conversation.title:
        first_line = data.content.strip().splitlines()[0] if data.content.strip() else "Untitled"
        fields["title"] = first_line[:TITLE_LENGTH]
    _touch(conversation, **fields)
    return message


@transaction.atomic
def add_assistant_message(conversation: Conversation, reply_to: int, data: AssistantMessageIn) -> Message:
    """Save a finished (or stopped, or failed) answer to the user's latest turn."""
    if data.lane == "b" and conversation.mode != ConversationMode.COMPARE:
        raise HistoryError("lane", "only compare conversations have lane b")
    last_user = conversation.messages.filter(role=MessageRole.USER).order_by("-id").values_list("pk", flat=True)
    if reply_to != next(iter(last_user), None):
        raise HistoryError("reply_to", "the conversation moved on: this answer is to a message that is no "
                                       "longer the latest one (edited or deleted); it was not saved")
    if conversation.messages.filter(pk__gt=reply_to, role=MessageRole.ASSISTANT, lane=data.lane).exists():
        raise HistoryError("lane", f"lane {data.lane} already has an answer to message {reply_to}; "
                                   "regenerate first (truncate after the user message)")
    node_id = data.node.id if data.node else None
    if node_id is not None and not Node.objects.filter(pk=node_id).exists():
        node_id = None  # removed since: the name still says who answered
    message = Message.objects.create(
        conversation=conversation,
        role=MessageRole.ASSISTANT,
        lane=data.lane,
        content=data.content,
        node_id=node_id,
        node_name=data.node.name if data.node else "",
        model=data.model,
        sha=data.sha,
        revision=data.revision or "",
        finish_reason=data.finish_reason,
        error=data.error,
        ttft_ms=data.ttft_ms,
        tokens_per_s=data.tokens_per_s,
        prompt_tokens=data.usage.prompt_tokens,
        completion_tokens=data.usage.completion_tokens,
    )
    _touch(conversation)
    return message


@transaction.atomic
def truncate_after(conversation: Conversation, message_id: int) -> int:
    """Regenerate: drop every message after ``message_id``. Returns how many went."""
    if not conversation.messages.filter(pk=message_id).exists():
        raise HistoryError("after", f"message {message_id} is not in this conversation")
    deleted, _ = conversation.messages.filter(pk__gt=message_id).delete()
    _touch(conversation)
    return deleted


def conversation_summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "mode": conversation.mode,
        "target": conversation.target,
        "target_b": conversation.target_b,
        "message_count": getattr(conversation, "message_count", None),
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def message_dict(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = {"id": message.pk, "role": message.role, "content": message.content,
                            "created_at": message.created_at.isoformat()}
    if message.role == MessageRole.ASSISTANT:
        data.update({
            "lane": message.lane,
            "node": {"id": message.node_id, "name": message.node_name} if message.node_name else None,
            "model": message.model,
            "sha": message.sha,
            "revision": message.revision or None,
            "finish_reason": message.finish_reason,
            "error": message.error,
            "ttft_ms": message.ttft_ms,
            "tokens_per_s": message.tokens_per_s,
            "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
        })
    return data


def conversation_detail(conversation: Conversation) -> dict[str, Any]:
    data = conversation_summary(conversation)
    messages = list(conversation.messages.order_by("id"))
    data.update({
        "system_prompt": conversation.system_prompt,
        "params": conversation.params,
        "message_count": len(messages),
        "messages": [message_dict(message) for message in messages],
    })
    return data

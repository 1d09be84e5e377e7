"""Playground state: each user's saved conversations, and who besides operators may chat."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from fleet.lib.choices import ColouredChoices


class PlaygroundAccess(models.Model):
    """One row (pk=1): the admin's choice whether viewers may use the playground too."""

    viewers_may_chat = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name_plural = "playground access"

    def __str__(self) -> str:
        return "viewers may chat" if self.viewers_may_chat else "operators and admins only"

    @classmethod
    def current(cls) -> PlaygroundAccess:
        return cls.objects.filter(pk=1).first() or cls(pk=1)


class ConversationMode(models.TextChoices):
    CHAT = "chat", "Chat"
    COMPARE = "compare", "Compare"


class Conversation(models.Model):
    """A user's saved chat. ``target`` is the chat socket's target object; in compare mode the answers
    of ``target`` are lane "a" and those of ``target_b`` lane "b"."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    mode = models.CharField(max_length=16, choices=ConversationMode.choices, default=ConversationMode.CHAT)
    target = models.JSONField(default=dict)
    target_b = models.JSONField(null=True, blank=True)
    system_prompt = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="playground_conv_owner_recent")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class MessageRole(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class FinishReason(ColouredChoices):
    STOP = "stop", "Finished", "green"
    LENGTH = "length", "Hit max tokens", "purple"
    CANCELLED = "cancelled", "Stopped", "grey"
    ERROR = "error", "Failed", "red"


class Lane(models.TextChoices):
    SHARED = "", "Shared"  # user messages: every lane sees them
    A = "a", "A"
    B = "b", "B"


class Message(models.Model):
    """One turn. Assistant turns record who answered (node, repo, sha) and how fast."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    lane = models.CharField(max_length=1, choices=Lane.choices, blank=True, default=Lane.SHARED)
    content = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Who answered: kept as text too, so the record still reads right after the node is removed.
    node = models.ForeignKey("inventory.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    node_name = models.CharField(max_length=128, blank=True)
    model = models.CharField(max_length=200, blank=True)
    sha = models.CharField(max_length=40, blank=True)
    revision = models.CharField(max_length=128, blank=True)
    finish_reason = models.CharField(max_length=16, choices=FinishReason.choices, blank=True)
    error = models.CharField(max_length=512, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} in {self.conversation_id}"

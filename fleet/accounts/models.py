from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone

from fleet.lib.choices import ColouredChoices


class Role(models.TextChoices):
    """Ordered roles: each one can do everything the ones before it can."""

    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ADMIN = "admin", "Admin"

    @classmethod
    def rank(cls, role: str) -> int:
        order = [cls.VIEWER, cls.OPERATOR, cls.ADMIN]
        return order.index(role) + 1 if role in order else 0


class User(AbstractUser):
    # Blank role = an account with no access to Fleet (an "outsider"); superusers count as admin.
    role = models.CharField(max_length=16, choices=Role.choices, blank=True, default="")

    @property
    def effective_role(self) -> str:
        if self.is_superuser:
            return Role.ADMIN
        return self.role

    def has_role(self, role: str) -> bool:
        return self.is_active and Role.rank(self.effective_role) >= Role.rank(role)


class AuditEvent(models.Model):
    """One row per state-changing action: who did what to which target, when."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept as text too, so the log still reads right after a user is deleted or for system actors.
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.target_repr}"


class ApiScope(models.TextChoices):
    METRICS = "metrics", "Prometheus /metrics"
    HUB = "hub", "Hugging Face mirror /hf/"
    CHAT = "chat", "OpenAI-compatible gateway /v1"
    ROLLOUTS = "rollouts", "Rollouts JSON API /api/"


class ApiKeyState(ColouredChoices):
    ACTIVE = "active", "Active", "green"
    EXPIRED = "expired", "Expired", "red"
    REVOKED = "revoked", "Revoked", "purple"


class ApiKey(models.Model):
    """A bearer key for machines (scrapers, HF clients, apps). Only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=8)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="None: never expires.")
    # Models (repo ids or deployment names) a `chat` key may use; empty: all of them.
    allowed_models = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"API key {self.hint} of {self.user}"

    @property
    def state(self) -> ApiKeyState:
        if self.revoked_at:
            return ApiKeyState.REVOKED
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return ApiKeyState.EXPIRED
        return ApiKeyState.ACTIVE

    @property
    def state_colour(self) -> str:
        return self.state.colour

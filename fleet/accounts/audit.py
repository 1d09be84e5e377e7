"""Recording state-changing actions in the audit log."""

from __future__ import annotations

from typing import Any

from django.db import models

from fleet.accounts.models import AuditEvent


def record(actor: Any, action: str, target: models.Model | None = None, **details: Any) -> AuditEvent:
    """Write an audit row in the caller's transaction (so it exists only if the action committed).

    ``actor`` is a user, or a string for non-user actors such as ``"agent:node-7"`` or ``"system"``.
    """
    user = actor if getattr(actor, "pk", None) and hasattr(actor, "get_username") else None
    actor_name = user.get_username() if user else str(actor or "system")
    return AuditEvent.objects.create(
        actor=user,
        actor_name=actor_name,
        action=action,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        details=details,
    )

"""How the audit log names a target: by the model's verbose name and the target's own name."""

from __future__ import annotations

from functools import cache

from django import template
from django.apps import apps

from fleet.accounts.models import AuditEvent

register = template.Library()


@cache
def _verbose_names() -> dict[str, str]:
    return {model._meta.model_name: str(model._meta.verbose_name) for model in apps.get_models()}


@register.filter
def target_kind(event: AuditEvent) -> str:
    """``enrollmenttoken`` → ``enrollment token``; empty when the target's name already says what it is
    (``enrollment token 3f2a``), or for an event without a target."""
    if not event.target_type:
        return ""
    kind = _verbose_names().get(event.target_type, event.target_type.replace("_", " "))
    return "" if event.target_repr.lower().startswith(kind.lower()) else kind

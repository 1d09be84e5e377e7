"""API keys: creation (plaintext shown once) and bearer authentication by scope."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet.accounts import audit
from fleet.accounts.models import ApiKey, ApiScope
from fleet.lib.errors import FieldError
from fleet.lib.secrets import hash_secret, hint, new_secret

LAST_USED_PRECISION = timedelta(minutes=1)  # avoid a write per request just to bump last_used_at
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")  # a repo id (ORG/NAME) or a deployment name
MAX_ALLOWED_MODELS = 50


class ApiKeyError(FieldError):
    """A refused key request; ``field`` names the input at fault."""

    def __init__(self, message: str, field: str = "scope") -> None:
        super().__init__(field, message)


def clean_allowed_models(models: list[str] | None) -> list[str]:
    """Validate a model allow-list (empty: every model). Raises ApiKeyError naming the entry."""
    cleaned: list[str] = []
    for entry in models or []:
        entry = entry.strip()
        if not entry:
            continue
        if not MODEL_NAME.match(entry):
            raise ApiKeyError(f"{entry!r} is not a model name; use repo ids such as ORG/NAME or deployment names "
                              "(letters, digits, '.', '_', '/', '-')", "allowed_models")
        if entry not in cleaned:
            cleaned.append(entry)
    if len(cleaned) > MAX_ALLOWED_MODELS:
        raise ApiKeyError(f"at most {MAX_ALLOWED_MODELS} models", "allowed_models")
    return cleaned


def create_api_key(actor: Any, user: Any, scopes: list[str], name: str = "", *, expires_at: datetime | None = None,
                   allowed_models: list[str] | None = None) -> tuple[ApiKey, str]:
    """Make a key; returns the row and the plaintext, which is never stored and shown only once."""
    unknown = sorted(set(scopes) - set(ApiScope.values))
    if not scopes or unknown:
        raise ApiKeyError(f"scope must be one or more of {', '.join(ApiScope.values)}" +
                          (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if expires_at is not None and expires_at <= timezone.now():
        raise ApiKeyError("the expiry must be in the future", "expires")
    models = clean_allowed_models(allowed_models)
    plaintext = new_secret("fak")
    with transaction.atomic():
        key = ApiKey.objects.create(user=user, name=name[:100], key_hash=hash_secret(plaintext),
                                    hint=hint(plaintext), scopes=sorted(set(scopes)), expires_at=expires_at,
                                    allowed_models=models)
        audit.record(actor, "api_key.create", key, scopes=key.scopes, user=user.get_username(),
                     expires_at=expires_at.isoformat() if expires_at else None, allowed_models=models)
    return key, plaintext


def authenticate_api_key(plaintext: str, scope: str) -> ApiKey | None:
    """The active key with ``scope`` whose owner is an active user with a role, or None."""
    if not plaintext or not plaintext.startswith("fak_"):
        return None
    key = ApiKey.objects.select_related("user").filter(key_hash=hash_secret(plaintext), revoked_at__isnull=True).first()
    now = timezone.now()
    if key is None or scope not in key.scopes or not key.user.has_role("viewer"):
        return None
    if key.expires_at is not None and key.expires_at <= now:
        return None
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_PRECISION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


def revoke_api_key(actor: Any, key: ApiKey) -> bool:
    with transaction.atomic():
        changed = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if changed:
            audit.record(actor, "api_key.revoke", key)
    return bool(changed)

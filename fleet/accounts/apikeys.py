"""API keys: creation (plaintext shown once) and bearer authentication by scope."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet.accounts import audit
from fleet.accounts.models import ApiKey, ApiScope
from fleet.lib.secrets import hash_secret, hint, new_secret

LAST_USED_PRECISION = timedelta(minutes=1)  # avoid a write per request just to bump last_used_at


class ApiKeyError(ValueError):
    pass


def create_api_key(actor: Any, user: Any, scopes: list[str], name: str = "") -> tuple[ApiKey, str]:
    unknown = sorted(set(scopes) - set(ApiScope.values))
    if not scopes or unknown:
        raise ApiKeyError(f"scope must be one or more of {', '.join(ApiScope.values)}" +
                          (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    plaintext = new_secret("fak")
    with transaction.atomic():
        key = ApiKey.objects.create(user=user, name=name[:100], key_hash=hash_secret(plaintext),
                                    hint=hint(plaintext), scopes=sorted(set(scopes)))
        audit.record(actor, "api_key.create", key, scopes=key.scopes, user=user.get_username())
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

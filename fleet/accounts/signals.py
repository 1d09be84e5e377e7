"""Sign-ins, failed sign-ins and sign-outs in the audit log (Django's auth signals; the admin's too)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from fleet.accounts import audit
from fleet.accounts.throttle import client_ip

USERNAME_MAX = 150


def _address(request: HttpRequest | None) -> dict[str, str]:
    return {"ip": client_ip(request)} if request is not None else {}


@receiver(user_logged_in, dispatch_uid="fleet-audit-login")
def _logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    audit.record(user, "user.login", user, **_address(request))


@receiver(user_logged_out, dispatch_uid="fleet-audit-logout")
def _logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is not None and getattr(user, "pk", None):  # signing out without a session is no event
        audit.record(user, "user.logout", user, **_address(request))


@receiver(user_login_failed, dispatch_uid="fleet-audit-login-failed")
def _login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None,
                  **kwargs: Any) -> None:
    """The actor is the name that was tried (Django has already masked the password); the target is that
    account when it exists, so a user's failed sign-ins show under their name."""
    User = get_user_model()
    tried = str(credentials.get(User.USERNAME_FIELD) or credentials.get("username") or "")[:USERNAME_MAX]
    account = User.objects.filter(**{User.USERNAME_FIELD: tried}).first() if tried else None
    audit.record(tried or "(no username)", "user.login_failed", account, **_address(request))

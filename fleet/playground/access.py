"""Who may chat with the fleet's models from the browser (the page, its history API, the chat socket)."""

from __future__ import annotations

from typing import Any

from fleet.accounts.models import Role
from fleet.playground.models import PlaygroundAccess


def viewers_may_chat() -> bool:
    """The admin's toggle (one query). Call it from sync code (or through database_sync_to_async)."""
    return PlaygroundAccess.objects.filter(pk=1, viewers_may_chat=True).exists()


def may_chat(user: Any) -> bool:
    """Operators and admins chat; viewers only where an admin allowed it (that case reads the database)."""
    if not (user and user.is_authenticated):
        return False
    if user.has_role(Role.OPERATOR):
        return True
    return user.has_role(Role.VIEWER) and viewers_may_chat()

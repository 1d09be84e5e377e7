"""Who may chat with the fleet's models from the browser."""

from __future__ import annotations

from typing import Any


def may_chat(user: Any) -> bool:
    """Operators and admins chat; viewers only where an admin allowed it."""
    return bool(user and user.is_authenticated and user.has_role("operator"))

"""`{{ user|may_chat }}`: whether to offer the playground to this user (the nav link)."""

from __future__ import annotations

from typing import Any

from django import template

from fleet.playground.access import may_chat as _may_chat

register = template.Library()


@register.filter
def may_chat(user: Any) -> bool:
    return _may_chat(user)

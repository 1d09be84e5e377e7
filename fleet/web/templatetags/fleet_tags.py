"""Template filters for the Fleet pages: byte sizes, relative times, role checks, labels."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.http import QueryDict
from django.utils import timezone

register = template.Library()

_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
EMPTY = "—"


def format_bytes(value: Any) -> str:
    """1024-based sizes with one decimal: 85899345920 → "80.0 GiB"; None → "—"."""
    if value is None or value == "":
        return EMPTY
    try:
        size = float(value)
    except (TypeError, ValueError):
        return EMPTY
    if size < 1024:
        return f"{int(size)} B"
    unit = 0
    while size >= 1024 and unit < len(_UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{size:.1f} {_UNITS[unit]}"


def format_relative(value: datetime | None, now: datetime | None = None) -> str:
    """"just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago", "in 15 min"; None → "never"."""
    if value is None:
        return "never"
    now = now or timezone.now()
    delta = (now - value).total_seconds()
    future = delta < 0
    seconds = abs(delta)
    if seconds < 5:
        return "just now"
    if seconds < 60:
        text = f"{int(seconds)} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)} h"
    else:
        text = f"{int(seconds // 86400)} d"
    return f"in {text}" if future else f"{text} ago"


@register.filter(name="bytes")
def bytes_filter(value: Any) -> str:
    return format_bytes(value)


@register.filter
def reltime(value: datetime | None) -> str:
    return format_relative(value)


@register.filter
def has_role(user: Any, role: str) -> bool:
    """`{% if user|has_role:"operator" %}`: False for anonymous users and outsiders."""
    return bool(getattr(user, "is_authenticated", False) and user.has_role(role))


@register.filter
def label_pairs(labels: Any) -> list[str]:
    """A node's labels as sorted "key=value" strings."""
    if not isinstance(labels, dict):
        return []
    return [f"{key}={value}" for key, value in sorted(labels.items())]


@register.filter
def details_pairs(details: Any) -> list[str]:
    """An audit event's details as short "key=value" strings."""
    if not isinstance(details, dict):
        return []
    return [f"{key}={value}" for key, value in details.items()]


@register.filter
def yesno_dash(value: bool | None, choices: str = "on,off") -> str:
    """True/False/None → the first/second choice or "—" (MIG mode and similar tri-state facts)."""
    if value is None:
        return EMPTY
    on, _, off = choices.partition(",")
    return on if value else off


@register.simple_tag(takes_context=True)
def page_url(context: template.Context, param: str, number: int) -> str:
    """The current query string with ``param`` set to ``number`` (other filters and pagers kept)."""
    request = context.get("request")
    params = request.GET.copy() if request is not None else QueryDict(mutable=True)
    params[param or "page"] = str(number)
    return "?" + params.urlencode()

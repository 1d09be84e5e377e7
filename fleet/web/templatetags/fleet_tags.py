"""Template filters for the Fleet pages: byte sizes, relative times, percentages (all from
fleet.lib.units), role checks, labels."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import template
from django.http import QueryDict
from django.utils.html import format_html
from django.utils.safestring import SafeString

from fleet.lib.units import EMPTY, format_bytes, format_percent, format_relative

register = template.Library()


@register.filter(name="bytes")
def bytes_filter(value: Any) -> str:
    return format_bytes(value)


@register.filter
def reltime(value: datetime | None) -> str:
    return format_relative(value)


_WHEN_FORMATS = {"datetime": "%Y-%m-%d %H:%M", "seconds": "%Y-%m-%d %H:%M:%S", "time": "%H:%M:%S"}


@register.filter
def when(value: datetime | None, style: str = "datetime") -> SafeString | str:
    """An absolute time, the one way pages show them: ``<time data-local>`` written in UTC here, which ui.js
    rewrites in the browser's time zone (24-hour) with UTC on hover. ``style``: datetime, seconds or time."""
    if value is None:
        return EMPTY
    value = value.astimezone(UTC)
    text = value.strftime(_WHEN_FORMATS.get(style, _WHEN_FORMATS["datetime"]))
    return format_html('<time datetime="{}" data-local="{}" title="{}">{} UTC</time>', value.isoformat(),
                       style, value.strftime("%Y-%m-%d %H:%M:%S UTC"), text)


@register.filter(name="percent")
def percent_filter(value: Any) -> str:
    return format_percent(value)


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

"""Alerts on the pages: durations to the minute or second, and the silence choices."""

from __future__ import annotations

from datetime import timedelta

from django import template

from fleet.lib.units import EMPTY
from fleet.telemetry.alert_actions import SILENCE_CHOICES

register = template.Library()

_UNITS = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]


@register.filter
def span(value: timedelta | None) -> str:
    """A duration in its two largest units: "42 s", "5 min 3 s", "2 h 10 min", "3 d 4 h"."""
    if value is None:
        return EMPTY
    seconds = max(0, int(value.total_seconds()))
    for index, (unit, size) in enumerate(_UNITS):
        if seconds >= size or unit == "s":
            text = f"{seconds // size} {unit}"
            if index + 1 < len(_UNITS):
                next_unit, next_size = _UNITS[index + 1]
                rest = seconds % size // next_size
                text += f" {rest} {next_unit}" if rest else ""
            return text
    return EMPTY


@register.simple_tag
def silence_choices() -> list[tuple[int, str]]:
    return SILENCE_CHOICES

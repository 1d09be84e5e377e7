"""How Fleet writes sizes, durations and percentages: one spelling on every page, command and log line.

Plain Python with no Django import, so the node agent uses it too. ``static/fleet/ui.js`` (``fleetFormat``)
writes the same strings in the browser; tests/web/test_units.py holds the two to each other.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

EMPTY = "—"  # what a page shows for an unknown value
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*", re.IGNORECASE)


def _number(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_bytes(value: Any) -> str:
    """1024-based, one decimal from KiB up: 1023 → "1023 B", 85899345920 → "80.0 GiB"; unknown → "—"."""
    size = _number(value)
    if size is None:
        return EMPTY
    if abs(size) < 1024:
        return f"{int(size)} B"
    unit = 0
    while abs(size) >= 1024 and unit < len(BYTE_UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{size:.1f} {BYTE_UNITS[unit]}"


def parse_size(text: str) -> int:
    """'1048576' / '512M' / '2G' / '2GiB' / '1.5T' → bytes (1024-based). Raises ValueError naming the fix."""
    match = _SIZE.fullmatch(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a size; use bytes or a number with K, M, G, T or P, such as 2G")
    return int(float(match.group(1)) * 1024 ** " KMGTP".index(match.group(2).upper() or " "))


def format_duration(seconds: Any) -> str:
    """A coarse duration, whole units: "42 s", "5 min", "3 h", "2 d"; unknown → "—"."""
    value = _number(seconds)
    if value is None:
        return EMPTY
    value = abs(value)
    if value < 60:
        return f"{int(value)} s"
    if value < 3600:
        return f"{int(value // 60)} min"
    if value < 86400:
        return f"{int(value // 3600)} h"
    return f"{int(value // 86400)} d"


def format_relative(value: datetime | None, now: datetime | None = None) -> str:
    """"just now", "42 s ago", "5 min ago", "in 15 min"; None → "never". Aware datetimes (UTC by default)."""
    if value is None:
        return "never"
    delta = ((now or datetime.now(UTC)) - value).total_seconds()
    if abs(delta) < 5:
        return "just now"
    text = format_duration(delta)
    return f"in {text}" if delta < 0 else f"{text} ago"


def percent(part: float, whole: float, empty: int = 0) -> int:
    """Whole percent done, rounded down and at most 100; ``empty`` when there is nothing to do."""
    if not whole:
        return empty
    return max(0, min(100, int(100 * part / whole)))


def format_percent(value: Any, digits: int = 0) -> str:
    """"42 %" (a space, as with every unit on the pages); unknown → "—"."""
    number = _number(value)
    return EMPTY if number is None else f"{number:.{digits}f} %"

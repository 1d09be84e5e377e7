"""Exponential backoff: the delay before retry number ``attempt`` (1 for the first retry)."""

from __future__ import annotations


def delay(attempt: int, base: float, cap: float) -> float:
    """``base * 2**(attempt-1)`` seconds, never more than ``cap`` (and ``base`` for attempt < 1)."""
    exponent = min(max(attempt, 1) - 1, 62)  # 2**62 already dwarfs any cap; keeps the float finite
    return min(cap, base * 2.0**exponent)

"""Row ids from query strings: whole numbers within the range of a 64-bit primary key."""

from __future__ import annotations

MAX_ID = 2**63 - 1  # BigAutoField on PostgreSQL and SQLite


def parse_id(text: str) -> int:
    """One id. Raises ValueError for anything but a whole number from 1 to MAX_ID."""
    text = text.strip()
    if not text.isdigit() or len(text) > 19:  # isdigit alone accepts '²' and other digits int() refuses
        raise ValueError(text)
    value = int(text)
    if not 1 <= value <= MAX_ID:
        raise ValueError(text)
    return value


def parse_id_list(text: str) -> list[int]:
    """Comma-separated ids, sorted and without repeats. Raises ValueError naming the first bad one."""
    return sorted({parse_id(part) for part in text.split(",") if part.strip()})

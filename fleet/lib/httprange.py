"""HTTP ``Range: bytes=`` for the servers that hand out model files (the hub's blob server, an agent's site
cache). Pure: the light agent ships it."""

from __future__ import annotations

import re

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range; None for no header. Raises ValueError if unsatisfiable."""
    if not header:
        return None
    match = RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise ValueError(header)
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(0, size - int(last)), size - 1
    if start >= size or start > end:
        raise ValueError(header)
    return start, end

"""HTTP ``Range: bytes=`` for the servers that hand out model files (the hub's blob server, an agent's site
cache). Pure: the light agent ships it."""

from __future__ import annotations

import re
from http.server import BaseHTTPRequestHandler

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


def send_file_headers(handler: BaseHTTPRequestHandler, size: int, span: tuple[int, int] | None,
                      etag: str) -> tuple[int, int]:
    """The status line and headers of a file answer (200, or 206 for ``span``); returns (start, length)."""
    start, end = span if span else (0, size - 1)
    length = max(0, end - start + 1)
    handler.send_response(206 if span else 200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(length))
    handler.send_header("Accept-Ranges", "bytes")
    handler.send_header("ETag", f'"{etag}"')
    if span:
        handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    handler.end_headers()
    return start, length

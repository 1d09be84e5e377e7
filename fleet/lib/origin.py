"""Same-origin check for browser websockets: the Origin must match scheme, host and port exactly.

channels' AllowedHostsOriginValidator accepts an Origin on any port (and either scheme) of an allowed
host, so a page served by any other service on that host could open a logged-in user's socket. Here an
Origin is accepted only when it is the origin the socket itself was opened on (the Host header, with the
scheme the browser used: X-Forwarded-Proto from the proxy, else the socket's), or one configured in
FLEET_CSRF_TRUSTED_ORIGINS or FLEET_PUBLIC_URL. The Host must be in ALLOWED_HOSTS.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """(scheme, host, port) of an ``http(s)://host[:port]`` origin; None for anything else (``null``, paths)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.username or parts.password:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _headers(scope: dict[str, Any]) -> dict[bytes, str]:
    return {name.lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


def allowed_origins(scope: dict[str, Any]) -> set[Origin]:
    headers = _headers(scope)
    origins = set()
    host = headers.get(b"host", "")
    if host and validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
        proto = headers.get(b"x-forwarded-proto", "").split(",")[0].strip().lower()
        if proto not in DEFAULT_PORTS:
            proto = "https" if scope.get("scheme") in ("wss", "https") else "http"
        own = parse_origin(f"{proto}://{host}")
        if own:
            origins.add(own)
    for configured in [*settings.CSRF_TRUSTED_ORIGINS, settings.FLEET_PUBLIC_URL]:
        parsed = parse_origin(configured) if configured else None
        if parsed:
            origins.add(parsed)
    return origins


def origin_allowed(scope: dict[str, Any]) -> bool:
    origin = parse_origin(_headers(scope).get(b"origin", ""))
    return origin is not None and origin in allowed_origins(scope)


class SameOriginValidator:
    """ASGI middleware: refuse a websocket whose Origin is not exactly this site's (see the module doc)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)

"""Small request helpers shared by views of every app: pagination, safe redirects, bearer tokens."""

from __future__ import annotations

from django.conf import settings
from django.core.paginator import Page, Paginator
from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme


def paginate(request: HttpRequest, queryset, per_page: int, param: str = "page") -> Page:
    """The requested page of ``queryset``; a bad or out-of-range page number gives the nearest page."""
    return Paginator(queryset, per_page).get_page(request.GET.get(param))


def safe_next(request: HttpRequest, fallback: str) -> str:
    """The POSTed ``next`` URL when it points back into this site, else ``fallback``."""
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return fallback


def server_url(request: HttpRequest) -> str:
    """The URL agents should use: FLEET_PUBLIC_URL when set, else the one this request came in on."""
    public = getattr(settings, "FLEET_PUBLIC_URL", "")
    if public:
        return public.rstrip("/")
    return request.build_absolute_uri("/").rstrip("/")


def parse_bearer(value: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value, or ""."""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def request_bearer(request: HttpRequest) -> str:
    """The bearer token of a request's ``Authorization`` header, or ""."""
    return parse_bearer(request.headers.get("Authorization", ""))


def scope_bearer(headers: list[tuple[bytes, bytes]]) -> str:
    """The bearer token of an ASGI scope's raw headers, or ""."""
    for name, value in headers:
        if name.lower() == b"authorization":
            return parse_bearer(value.decode("latin-1"))
    return ""

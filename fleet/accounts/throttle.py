"""Login throttling (django-axes) hooks: whose address counts, and the page a locked-out sign-in gets."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def client_ip(request: HttpRequest) -> str:
    """The peer address as the ASGI server reports it. Behind nginx, Daphne --proxy-headers has already
    replaced it with the X-Forwarded-For nginx set; a client-sent header is never read here."""
    return request.META.get("REMOTE_ADDR") or "unknown"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{int(seconds)} seconds"
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{round(minutes / 60)} hours"


def locked_out(request: HttpRequest, original_response: Any = None, credentials: dict | None = None) -> HttpResponse:
    """HTTP 429 with what happened, for how long, and how an admin lifts it."""
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    return render(request, "registration/locked_out.html", {
        "failure_limit": settings.AXES_FAILURE_LIMIT, "username": username[:150],
        "lockout": _duration(settings.AXES_COOLOFF_TIME.total_seconds()),
    }, status=429)

"""Response hardening for every page (a Content-Security-Policy), and static files in the embedded default."""

from __future__ import annotations

import os

from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin
from whitenoise.middleware import WhiteNoiseMiddleware

# Scripts only from Fleet's own static files (no inline script or event handler anywhere, no CDN); no
# remote images, fonts or connections; nothing may frame the pages. Styles allow inline attributes for
# the server-computed widths of progress bars.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


class SecurityHeadersMiddleware(MiddlewareMixin):
    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response



class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise serving the static files of every app (the Django admin's included) in the embedded
    default, found through the staticfiles finders; production's nginx serves STATIC_ROOT before Fleet
    sees the request. Quiet about a STATIC_ROOT that `collectstatic` has not created."""

    def add_files(self, root: str, prefix: str | None = None) -> None:
        if os.path.isdir(root):
            super().add_files(root, prefix)

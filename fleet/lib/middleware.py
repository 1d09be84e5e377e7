"""Response hardening for every page (a Content-Security-Policy), and static files in the embedded default."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings as django_settings
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
    sees the request. Quiet about a STATIC_ROOT that `collectstatic` has not created.

    Async-capable: WhiteNoise's own middleware is sync-only, and one sync middleware makes Django run the
    whole chain, async views included, through thread hops (the /v1 gateway's streams then never reach
    their consumer's event loop). Here a request that is no static file goes straight on."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable, settings: Any = django_settings) -> None:
        super().__init__(get_response, settings)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
        return await self.get_response(request)

    def add_files(self, root: str, prefix: str | None = None) -> None:
        if os.path.isdir(root):
            super().add_files(root, prefix)

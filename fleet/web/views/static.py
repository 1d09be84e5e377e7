"""Serving `static/` from the repository in the embedded default (Daphne serves no static files).

Production puts nginx in front and serves STATIC_ROOT (after `collectstatic`) itself; this view then
never sees a request. It serves only files under the first STATICFILES_DIRS entry, read-only.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from django.views.static import serve

STATIC_CACHE_SECONDS = 300


@require_safe
def static_file(request: HttpRequest, path: str) -> HttpResponse:
    # django.views.static.serve normalises the path and refuses anything outside document_root.
    response = serve(request, path, document_root=str(settings.STATICFILES_DIRS[0]))
    response["Cache-Control"] = f"public, max-age={STATIC_CACHE_SECONDS}"
    return response


static_file.public = True  # deliberately open: the login page needs its stylesheet

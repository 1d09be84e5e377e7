"""`GET /playground/targets/`: what the playground can chat with now (JSON for the page)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe

from fleet.playground import targets
from fleet.playground.access import may_chat


def chat_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Logged in and allowed to chat (`access.may_chat`); others get a JSON 403 naming the reason."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not may_chat(request.user):
            return JsonResponse({"error": "chatting with the fleet's models needs the operator role, "
                                          "or an admin allowing viewers to chat"}, status=403)
        return view(request, *args, **kwargs)

    wrapper.required_role = "viewer"  # at least; may_chat decides the rest (tests/server/test_every_url_protected)
    return wrapper


@chat_required
@require_safe
def targets_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(targets.listing())

"""API keys: create (plaintext shown once), list, revoke. Admins manage every key; operators their own."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from fleet.accounts.apikeys import ApiKeyError, create_api_key, revoke_api_key
from fleet.accounts.models import ApiKey
from fleet.accounts.permissions import operator_required
from fleet.lib.http import paginate, server_url
from fleet.web.apikey_forms import ApiKeyForm

KEYS_PER_PAGE = 50


def _visible_keys(request: HttpRequest):
    keys = ApiKey.objects.select_related("user").order_by("-created_at", "-id")
    return keys if request.user.has_role("admin") else keys.filter(user=request.user)


@operator_required
@never_cache  # the POST response carries a secret: keep it out of every cache
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    created: ApiKey | None = None
    plaintext: str | None = None
    if request.method == "POST":
        form = ApiKeyForm(request.POST, user=request.user)
        if form.is_valid():
            data = form.cleaned_data
            try:
                created, plaintext = create_api_key(request.user, form.owner_user, data["scopes"], data["name"],
                                                    expires_at=form.expires_at,
                                                    allowed_models=data["allowed_models"])
            except ApiKeyError as error:
                form.add_error(error.field if error.field in form.fields else None, str(error))
            else:
                messages.success(request, f"API key {created.hint} created. Copy it now: it is shown once.")
                form = ApiKeyForm(user=request.user)
    else:
        form = ApiKeyForm(user=request.user)
    return render(request, "web/api_keys.html", {
        "form": form, "created": created, "plaintext": plaintext, "server_url": server_url(request),
        "keys": paginate(request, _visible_keys(request), KEYS_PER_PAGE),
        "is_admin": request.user.has_role("admin"),
    })


@operator_required
@require_POST
def api_key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(_visible_keys(request), pk=pk)  # another user's key is not found for operators
    if revoke_api_key(request.user, key):
        messages.success(request, f"API key {key.hint} revoked; clients using it are refused from now on.")
    else:
        messages.info(request, f"API key {key.hint} was already revoked.")
    return redirect("api-keys")

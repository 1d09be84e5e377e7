"""Enrollment: create one-time tokens (plaintext shown once), revoke tokens and node credentials."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from fleet.accounts.permissions import operator_required
from fleet.inventory.models import EnrollmentToken, NodeCredential
from fleet.inventory.services import (
    InventoryError,
    create_enrollment_token,
    revoke_credential,
    revoke_enrollment_token,
)
from fleet.lib.http import paginate, safe_next, server_url
from fleet.web.forms import EnrollmentTokenForm

TOKENS_PER_PAGE = 25
CREDENTIALS_PER_PAGE = 25


@operator_required
@never_cache  # the POST response carries a secret: keep it out of every cache
@require_http_methods(["GET", "POST"])
def enrollment(request: HttpRequest) -> HttpResponse:
    new_token: str | None = None
    created: EnrollmentToken | None = None
    if request.method == "POST":
        form = EnrollmentTokenForm(request.POST)
        if form.is_valid():
            try:
                created, new_token = create_enrollment_token(
                    request.user, ttl=form.ttl, uses=form.cleaned_data["uses"], note=form.cleaned_data["note"]
                )
            except InventoryError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                messages.success(
                    request, f"Enrollment token {created.hint} created. Copy it now: it is shown once."
                )
                form = EnrollmentTokenForm()
    else:
        form = EnrollmentTokenForm()
    server = server_url(request)
    context = {
        "form": form,
        "new_token": new_token,
        "created": created,
        "server_url": server,
        "enroll_command": f"fleet-agent enroll --server {server} --token {new_token}" if new_token else "",
        "tokens": paginate(
            request, EnrollmentToken.objects.select_related("created_by").order_by("-created_at", "-id"),
            TOKENS_PER_PAGE, "tokens_page",
        ),
        "credentials": paginate(
            request, NodeCredential.objects.select_related("node").order_by("-created_at", "-id"),
            CREDENTIALS_PER_PAGE, "credentials_page",
        ),
    }
    return render(request, "web/enrollment.html", context)


@operator_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(EnrollmentToken, pk=pk)
    if revoke_enrollment_token(request.user, token):
        messages.success(request, f"Enrollment token {token.hint} revoked; it can no longer enroll nodes.")
    else:
        messages.info(request, f"Enrollment token {token.hint} was already revoked.")
    return redirect(safe_next(request, reverse("enrollment")))


@operator_required
@require_POST
def credential_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    credential = get_object_or_404(NodeCredential.objects.select_related("node"), pk=pk)
    if revoke_credential(request.user, credential):
        messages.success(
            request,
            f"Credential {credential.hint} of {credential.node.name} revoked; its agent is disconnected.",
        )
    else:
        messages.info(request, f"Credential {credential.hint} of {credential.node.name} was already revoked.")
    return redirect(safe_next(request, reverse("enrollment")))

"""Operators take alerts: acknowledge one (who, when) or silence it for a chosen time. Viewers only read."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from fleet.accounts.permissions import operator_required
from fleet.lib.errors import FieldError
from fleet.lib.http import safe_next
from fleet.telemetry import alert_actions
from fleet.telemetry.models import Alert


def _back(request: HttpRequest) -> HttpResponse:
    return redirect(safe_next(request, reverse("alerts")))


@operator_required
@require_POST
def alert_acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    get_object_or_404(Alert, pk=pk)
    try:
        alert = alert_actions.acknowledge(request.user, pk)
    except FieldError as error:
        messages.error(request, f"{error.field}: {error.message}")
        return _back(request)
    messages.success(request, f"Acknowledged: {alert.get_kind_display()} on {alert.node.name}.")
    return _back(request)


@operator_required
@require_POST
def alert_silence(request: HttpRequest, pk: int) -> HttpResponse:
    get_object_or_404(Alert, pk=pk)
    try:
        seconds = int(request.POST.get("duration", ""))
    except ValueError:
        seconds = -1
    try:
        alert = alert_actions.silence(request.user, pk, seconds)
    except FieldError as error:
        messages.error(request, f"{error.field}: {error.message}")
        return _back(request)
    label = dict(alert_actions.SILENCE_CHOICES)[seconds]
    messages.success(request, f"Silenced for {label}: {alert.get_kind_display()} on {alert.node.name}.")
    return _back(request)

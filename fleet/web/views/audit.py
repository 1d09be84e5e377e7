"""The audit log (admin only): newest first, paginated, filterable by action."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from fleet.accounts.models import AuditEvent
from fleet.accounts.permissions import admin_required
from fleet.lib.http import paginate
from fleet.web.forms import AuditFilterForm

EVENTS_PER_PAGE = 50


@admin_required
def audit_log(request: HttpRequest) -> HttpResponse:
    actions = list(AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct())
    form = AuditFilterForm(request.GET, actions=actions)
    events = AuditEvent.objects.order_by("-created_at", "-id")
    if form.is_valid():
        if form.cleaned_data["action"]:
            events = events.filter(action=form.cleaned_data["action"])
    else:
        messages.error(request, "action: no such action in the log; showing all events.")
    page = paginate(request, events, EVENTS_PER_PAGE)
    return render(request, "web/audit.html", {"form": form, "page": page})

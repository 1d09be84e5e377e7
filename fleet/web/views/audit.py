"""The audit log (admin only): newest first, paginated, filterable by actor, action and time."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from fleet.accounts.models import AuditEvent
from fleet.accounts.permissions import admin_required
from fleet.lib.http import paginate
from fleet.web.audit_forms import AuditFilterForm

EVENTS_PER_PAGE = 50


def _distinct(field: str) -> list[str]:
    return list(AuditEvent.objects.order_by(field).values_list(field, flat=True).distinct())


@admin_required
def audit_log(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET, actors=_distinct("actor_name"), actions=_distinct("action"))
    events = AuditEvent.objects.order_by("-created_at", "-id")
    if form.is_valid():
        events = form.apply(events)
    else:
        problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
        messages.error(request, f"{problems}; showing all events.")
    page = paginate(request, events, EVENTS_PER_PAGE)
    return render(request, "web/audit.html", {"form": form, "page": page})

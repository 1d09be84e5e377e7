"""The fleet overview: summary cards and recently changed nodes."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from fleet.accounts.permissions import viewer_required
from fleet.inventory.models import Node
from fleet.inventory.queries import fleet_summary, with_gpu_counts
from fleet.telemetry.models import Alert

RECENT_NODES = 8
RECENT_ALERTS = 12


@viewer_required
def overview(request: HttpRequest) -> HttpResponse:
    recent = with_gpu_counts(Node.objects.order_by("-status_changed_at", "-id"))[:RECENT_NODES]
    return render(
        request,
        "web/overview.html",
        {"summary": fleet_summary(), "recent_nodes": list(recent), "live_topics": "fleet",
         "recent_alerts": list(Alert.objects.select_related("node")[:RECENT_ALERTS])},
    )

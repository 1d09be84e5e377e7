"""Telemetry reads for the pages: a node's live snapshot and history, the fleet heatmap, alerts."""

from __future__ import annotations

import json
import time

from django.conf import settings
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, render

from fleet.accounts.permissions import viewer_required
from fleet.inventory.models import Gpu, GpuState, Node
from fleet.lib.ids import parse_id
from fleet.telemetry import records
from fleet.telemetry.freshness import is_live, stale_after
from fleet.telemetry.models import Alert, AlertSeverity
from fleet.telemetry.store import get_store

ALERTS_PER_PAGE = 50
FEED_SIZE = 12


def _frame_ts(latest: str | None) -> float | None:
    return json.loads(latest).get("ts") if latest else None


@viewer_required
def node_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The latest frame and the 15-minute window of one node (the charts' first paint). A node that is not
    live (offline, revoked, silent) has no latest frame here, only ``since``: its newest frame's time."""
    node = get_object_or_404(Node, pk=pk)
    latest, points = get_store().snapshot(node.pk)
    since = _frame_ts(latest)
    live = is_live(node.status, since)
    head = json.dumps({"node": node.pk, "status": node.status, "live": live, "since": since, "now": time.time(),
                       "stale_after": stale_after(), "offline_after": settings.FLEET_OFFLINE_AFTER})
    body = f'{head[:-1]},"latest":{latest if live and latest else "null"},"points":{points}}}'
    return HttpResponse(body, content_type="application/json")


@viewer_required
def node_history(request: HttpRequest, pk: int) -> JsonResponse:
    node = get_object_or_404(Node, pk=pk)
    range_name = request.GET.get("range", "1h")
    if range_name not in records.HISTORY_RANGES:
        choices = ", ".join(records.HISTORY_RANGES)
        return JsonResponse({"error": f"range: must be one of {choices}"}, status=400)
    return JsonResponse(records.history(node.pk, range_name))


@viewer_required
def fleet_heat(request: HttpRequest) -> JsonResponse:
    """Every present GPU with its latest utilization, memory, temperature and power (the heatmap's and the
    GPU table's first paint). Nodes that are not live carry no values, only ``since``."""
    store = get_store()
    heat = store.heat_all()
    frames = {nid: frame.get("ts") for nid, frame in store.latest_all().items()}
    gpus: dict[int, list[int]] = {}
    models: dict[int, dict[int, str]] = {}
    present = Gpu.objects.filter(state=GpuState.PRESENT).values_list("node_id", "index", "name")
    for node_id, index, name in present:
        gpus.setdefault(node_id, []).append(index)
        models.setdefault(node_id, {})[index] = name
    nodes = []
    now = time.time()
    for node in Node.objects.filter(pk__in=gpus.keys()).only("id", "name", "status").order_by("name"):
        live = is_live(node.status, frames.get(node.pk), now)
        nodes.append({"id": node.pk, "name": node.name, "status": node.status, "gpus": sorted(gpus[node.pk]),
                      "models": models[node.pk], "live": live, "since": frames.get(node.pk),
                      "heat": json.loads(heat[node.pk]) if live and node.pk in heat else []})
    return JsonResponse({"nodes": nodes, "now": now, "stale_after": stale_after()})


def _bad_node() -> HttpResponse:
    return HttpResponseBadRequest("node: give a node id (a whole number from 1 to 2**63-1), or leave it out",
                                  content_type="text/plain; charset=utf-8")


def _alerts(request: HttpRequest):
    alerts = Alert.objects.select_related("node", "acknowledged_by", "silenced_by").order_by("-opened_at", "-id")
    state = request.GET.get("state", "")
    if state == "open":
        alerts = alerts.filter(resolved_at__isnull=True)
    elif state == "resolved":
        alerts = alerts.filter(resolved_at__isnull=False)
    severity = request.GET.get("severity", "")
    if severity in AlertSeverity.values:
        alerts = alerts.filter(severity=severity)
    node = request.GET.get("node", "").strip()
    if node:
        alerts = alerts.filter(node_id=parse_id(node))  # ValueError: the views answer 400
    return alerts, {"state": state, "severity": severity if severity in AlertSeverity.values else "", "node": node}


@viewer_required
def alert_list(request: HttpRequest) -> HttpResponse:
    try:
        alerts, filters = _alerts(request)
    except ValueError:
        return _bad_node()
    page = Paginator(alerts, ALERTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "web/alerts.html", {
        "page": page, "filters": filters, "severities": AlertSeverity.choices, "live_topics": "fleet",
        "open_count": Alert.objects.filter(resolved_at__isnull=True).count(),
    })


@viewer_required
def alert_feed(request: HttpRequest) -> HttpResponse:
    """The newest alerts as an HTML fragment (the feeds on the overview and node pages refresh with it)."""
    try:
        alerts, _ = _alerts(request)
    except ValueError:
        return _bad_node()
    return render(request, "web/_alert_feed.html", {"alerts": list(alerts[:FEED_SIZE])})

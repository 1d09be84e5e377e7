"""Node pages: the filtered list, one node's facts and GPUs, and a JSON read of node states."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from fleet.accounts.permissions import viewer_required
from fleet.hub.models import ModelVersion
from fleet.hub.node_models import node_models_context
from fleet.inventory.models import Node, NodeCredential, NodeRuntime
from fleet.inventory.queries import node_payload, with_gpu_counts
from fleet.lib.ids import parse_id_list
from fleet.rollouts import overview as rollout_overview
from fleet.telemetry.models import Alert
from fleet.web import node_table
from fleet.web.forms import NodeFilterForm

NODES_PER_PAGE = 50
MAX_STATE_IDS = 200


@viewer_required
def node_list(request: HttpRequest) -> HttpResponse:
    """The filtered, sorted node list. ``?partial=rows`` answers only the table body: the open page
    fetches it when a node it does not show appears (enrolled) and to refresh the current load."""
    form = NodeFilterForm(request.GET)
    sort, descending = node_table.parse_sort(request.GET.get("sort"))
    filter_ok = form.is_valid()
    nodes = form.apply(Node.objects.all()) if filter_ok else Node.objects.none()
    page = node_table.node_page(request, nodes, sort, descending, NODES_PER_PAGE)
    if not filter_ok and request.GET.get("partial") != "rows":
        # A wrong filter shows no rows rather than an unfiltered list the user would misread.
        for field, errors in form.errors.items():
            for error in errors:
                messages.error(request, error if field == "label" else f"{field}: {error}")
    context = {"form": form, "page": page, "filter_ok": filter_ok, "live_topics": "fleet",
               "columns": _headers(request, sort, descending), "column_count": len(node_table.COLUMNS)}
    if request.GET.get("partial") == "rows":
        return render(request, "web/_node_rows.html", context)
    return render(request, "web/node_list.html", context)


def _headers(request: HttpRequest, sort: str, descending: bool) -> list[dict]:
    """Each column's header: its label and the link that sorts by it (again: the other way round)."""
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("partial", None)
    headers = []
    for column in node_table.COLUMNS:
        current = column.key == sort
        desc = (not descending) if current else column.first_desc
        query["sort"] = ("-" if desc else "") + column.key
        headers.append({"key": column.key, "label": column.label, "numeric": column.numeric,
                        "url": "?" + query.urlencode(),
                        "aria_sort": ("descending" if descending else "ascending") if current else ""})
    return headers


@viewer_required
def node_detail(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_object_or_404(with_gpu_counts(Node.objects.all()), pk=pk)
    gpus = list(node.gpus.order_by("index", "state", "id"))
    runtimes = _with_revisions(list(node.runtimes.all()))
    credentials: list[NodeCredential] = []
    if request.user.has_role("operator"):
        credentials = list(node.credentials.all())
    return render(
        request,
        "web/node_detail.html",
        {"node": node, "gpus": gpus, "credentials": credentials, "live_topics": f"node:{node.pk}",
         "runtimes": runtimes, "hub": node_models_context(node, request.user),
         "memberships": rollout_overview.node_deployments(node),
         "node_alerts": list(Alert.objects.filter(node=node).select_related("node")[:12])},
    )


def _with_revisions(runtimes: list[NodeRuntime]) -> list[NodeRuntime]:
    """Attach the hub's revision name (``v1``, ``main``) to each runtime's version, where it is known."""
    if runtimes:
        names = dict(((repo, sha), revision) for repo, sha, revision in ModelVersion.objects.filter(
            model__repo_id__in={r.repo for r in runtimes}, sha__in={r.sha for r in runtimes},
        ).values_list("model__repo_id", "sha", "revision"))
        for runtime in runtimes:
            runtime.revision = names.get((runtime.repo, runtime.sha))
    return runtimes


@viewer_required
def node_states(request: HttpRequest) -> JsonResponse:
    """`?ids=1,2,3` → the live payload of those nodes; live.js uses it to catch up after (re)connecting."""
    raw = request.GET.get("ids", "")
    try:
        ids = parse_id_list(raw)
    except ValueError:
        return JsonResponse({"error": "ids: give node ids as comma-separated whole numbers (1 to 2**63-1)"},
                            status=400)
    if len(ids) > MAX_STATE_IDS:
        return JsonResponse({"error": f"ids: at most {MAX_STATE_IDS} ids"}, status=400)
    nodes = with_gpu_counts(Node.objects.filter(pk__in=ids)) if ids else []
    return JsonResponse({"nodes": [node_payload(node) for node in nodes]})

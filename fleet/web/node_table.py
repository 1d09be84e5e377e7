"""The node list's rows: facts from the database, current GPU load from the telemetry store, and sorting.

A fixed number of queries whatever the row count: the nodes (with GPU count and memory annotated), their
present GPUs and their active model versions, each in one query; current utilization and temperature come
from the telemetry store, never per row. Sorting by a database column pages in the database (only one page
of GPUs and models is loaded); sorting by load, temperature or model loads every matching node.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.paginator import Page
from django.db.models import F, Prefetch, QuerySet
from django.http import HttpRequest

from fleet.hub.models import InstallState, NodeInstall
from fleet.inventory.models import Gpu, GpuState, Node, NodeStatus
from fleet.inventory.queries import with_gpu_counts
from fleet.lib.http import paginate
from fleet.telemetry.freshness import stale_after
from fleet.telemetry.store import get_store


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    sort: Callable[[Node], Any]
    numeric: bool = False
    first_desc: bool = False  # the first click sorts the biggest first (load, temperature)


STATUS_ORDER = {NodeStatus.ONLINE: 0, NodeStatus.OFFLINE: 1, NodeStatus.NEVER_SEEN: 2, NodeStatus.REVOKED: 3}

COLUMNS: list[Column] = [
    Column("name", "Name", lambda n: n.name.lower()),
    Column("kind", "Kind", lambda n: n.kind),
    Column("status", "Status", lambda n: STATUS_ORDER.get(n.status, 9)),
    Column("hostname", "Hostname", lambda n: (n.hostname or "").lower() or None),
    Column("gpu_model", "GPU model", lambda n: n.gpu_model or None),
    Column("gpus", "GPUs", lambda n: n.gpu_count, numeric=True, first_desc=True),
    Column("memory", "GPU memory", lambda n: n.gpu_memory, numeric=True, first_desc=True),
    Column("util_avg", "Util avg", lambda n: n.util_avg, numeric=True, first_desc=True),
    Column("util_max", "Util max", lambda n: n.util_max, numeric=True, first_desc=True),
    Column("temp", "Hottest", lambda n: n.temp_max, numeric=True, first_desc=True),
    Column("labels", "Labels", lambda n: " ".join(n.label_list) or None),
    Column("model", "Active model", lambda n: n.active_model_text or None),
    Column("agent", "Agent", lambda n: n.agent_version or None),
    Column("last_seen", "Last seen", lambda n: n.last_seen.timestamp() if n.last_seen else None, first_desc=True),
]
BY_KEY = {column.key: column for column in COLUMNS}
DEFAULT_SORT = "name"


def parse_sort(raw: str | None) -> tuple[str, bool]:
    """``?sort=temp`` or ``?sort=-temp`` → (column key, descending); unknown → by name, ascending."""
    raw = (raw or "").strip()
    descending = raw.startswith("-")
    key = raw.lstrip("-")
    if key not in BY_KEY:
        return DEFAULT_SORT, False
    return key, descending


# Columns the database can order by: the list pages there and loads GPUs, models and load for one page only.
DB_ORDER = {"name": "name", "kind": "kind", "gpus": "gpu_count", "memory": "gpu_memory",
            "agent": "agent_version", "last_seen": "last_seen"}


def node_page(request: HttpRequest, queryset: QuerySet[Node], sort: str, descending: bool, per_page: int) -> Page:
    """One page of ``queryset`` sorted by ``sort``, its rows carrying the list's columns. Columns the database
    cannot order by (load, temperature, models, status order) are sorted here over all matching nodes."""
    if sort in DB_ORDER:
        field = F(DB_ORDER[sort])
        order = field.desc(nulls_last=True) if descending else field.asc(nulls_last=True)
        page = paginate(request, _with_columns(queryset).order_by(order, "name"), per_page)
        page.object_list = _attached(list(page.object_list))
        return page
    return paginate(request, node_rows(queryset, sort, descending), per_page)


def node_rows(queryset: QuerySet[Node], sort: str = DEFAULT_SORT, descending: bool = False) -> list[Node]:
    """All nodes of ``queryset`` with the list's columns attached, sorted (unknown values last)."""
    nodes = _attached(list(_with_columns(queryset)))
    column = BY_KEY.get(sort) or BY_KEY[DEFAULT_SORT]
    known = [n for n in nodes if column.sort(n) is not None]
    unknown = [n for n in nodes if column.sort(n) is None]
    known.sort(key=lambda n: (column.sort(n), n.name.lower()), reverse=descending)
    unknown.sort(key=lambda n: n.name.lower())
    return known + unknown


def _with_columns(queryset: QuerySet[Node]) -> QuerySet[Node]:
    return with_gpu_counts(queryset).prefetch_related(
        Prefetch("gpus", queryset=Gpu.objects.filter(state=GpuState.PRESENT).order_by("index"),
                 to_attr="present_gpus"),
        Prefetch("hub_installs", to_attr="active_installs",
                 queryset=NodeInstall.objects.filter(state=InstallState.ACTIVE)
                 .select_related("version").order_by("repo")),
    )


def _attached(nodes: list[Node]) -> list[Node]:
    latest = _latest_frames(nodes)
    for node in nodes:
        _attach(node, latest.get(node.pk))
    return nodes


def _latest_frames(nodes: list[Node]) -> dict[int, dict[str, Any]]:
    """The current frame of each online node that reported recently (stale frames are not current load)."""
    online = [node.pk for node in nodes if node.status == NodeStatus.ONLINE]
    if not online:
        return {}
    cutoff = time.time() - stale_after()
    return {node_id: frame for node_id, frame in get_store().latest_of(online).items()
            if frame.get("ts", 0) >= cutoff}


def _attach(node: Node, frame: dict[str, Any] | None) -> None:
    names = Counter(gpu.name for gpu in node.present_gpus)
    node.gpu_models = [f"{count}× {name}" if len(names) > 1 else name for name, count in names.most_common()]
    node.gpu_model = ", ".join(node.gpu_models)
    node.gpu_memory = node.gpu_memory or 0
    node.label_list = [f"{key}={value}" for key, value in sorted((node.labels or {}).items())]
    node.active_models = node.active_installs
    node.active_model_text = ", ".join(_install_text(install) for install in node.active_installs)
    gpus = [gpu for gpu in (frame or {}).get("gpus", []) if not gpu.get("lost")]
    utils = [gpu["utilization_gpu"] for gpu in gpus if gpu.get("utilization_gpu") is not None]
    temps = [gpu["temperature_c"] for gpu in gpus if gpu.get("temperature_c") is not None]
    node.util_avg = sum(utils) / len(utils) if utils else None
    node.util_max = max(utils) if utils else None
    node.temp_max = max(temps) if temps else None
    node.telemetry_ts = frame.get("ts") if frame else None


def _install_text(install: NodeInstall) -> str:
    revision = install.version.revision if install.version else install.sha[:12]
    return f"{install.repo.split('/')[-1]} {revision}"

"""`/metrics`: Prometheus text format. GPU series under the DCGM exporter's names, labels and units
(Grafana dashboard 12239 works unchanged), plus ``fleet_*`` control-plane series in base units.

Access: ``Authorization: Bearer <API key with the metrics scope>``, or a scraper address in
FLEET_METRICS_ALLOW. Values come from the telemetry store, so any server process answers for the
whole fleet (Redis in production).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from fleet.accounts.apikeys import authenticate_api_key
from fleet.inventory.models import Gpu, GpuState, Node, NodeStatus
from fleet.lib.cidrs import address_allowed
from fleet.lib.http import request_bearer
from fleet.telemetry import gateway_stats
from fleet.telemetry.freshness import is_live
from fleet.telemetry.live import VALUE_FIELDS
from fleet.telemetry.models import Alert, AlertSeverity
from fleet.telemetry.store import get_store

MIB = 1024 * 1024
LABELS = ["gpu", "UUID", "modelName", "Hostname", "node"]  # node: Fleet's node name (hostnames may repeat)
# (DCGM name, help, sample field, scale to DCGM's unit)
DCGM_FIELDS: list[tuple[str, str, str, float]] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "utilization_gpu", 1),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "utilization_memory", 1),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "memory_used_bytes", 1 / MIB),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temperature_c", 1),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_w", 1),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock_mhz", 1),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", "mem_clock_mhz", 1),
    ("DCGM_FI_DEV_FAN_SPEED", "Fan speed (in %).", "fan_percent", 1),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy consumption since boot (in mJ).", "energy_j", 1000),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.", "ecc_corrected", 1),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.", "ecc_uncorrected", 1),
    ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", "last_xid", 1),
]


# Series of the layers above telemetry (rollouts), registered by their apps: callables yielding families.
EXTRA_FAMILIES: list[Callable[[], Iterable[Metric]]] = []


def add_families(source: Callable[[], Iterable[Metric]]) -> None:
    if source not in EXTRA_FAMILIES:
        EXTRA_FAMILIES.append(source)


FB_FREE = ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).")
USED, TOTAL = VALUE_FIELDS.index("memory_used_bytes"), VALUE_FIELDS.index("memory_total_bytes")


def _wanted(names: set[str], family: str) -> bool:
    return not names or family in names or f"{family}_total" in names


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def dcgm_text(names: set[str], nodes: dict[int, dict]) -> str:
    """The DCGM families in the Prometheus text format, written directly: at thousands of nodes the
    prometheus_client objects (a Sample per value, then generate_latest) took seconds per scrape. Same
    output as generate_latest: labels sorted by name, values through floatToGoString."""
    wanted = [(k, name, text, field, scale) for k, (name, text, field, scale) in enumerate(DCGM_FIELDS)
              if _wanted(names, name)]
    free_wanted = _wanted(names, FB_FREE[0])
    if not wanted and not free_wanted:
        return ""
    slots = [VALUE_FIELDS.index(field) if field in VALUE_FIELDS else None for _, _, field, _ in DCGM_FIELDS]
    # keyed by "node uuid" strings: the GC does not track them (a tuple per GPU, held through the render,
    # helped set off full collections)
    models = {f"{node_id} {uuid}": name for node_id, uuid, name in Gpu.objects.values_list("node_id", "uuid", "name")}
    lines: list[list[str]] = [[] for _ in DCGM_FIELDS]
    free: list[str] = []
    now = time.time()
    for node_id, ts, gpus in get_store().gpu_values():
        node = nodes.get(node_id)
        if node is None or not is_live(node["status"], ts, now):
            continue  # offline, revoked or silent: the pages say "no data since", /metrics says nothing
        host, name = _label(node["hostname"] or node["name"]), _label(node["name"])
        for index, uuid, lost, values, last_xid in gpus:
            if lost:
                continue  # DCGM stops exporting a GPU it cannot read
            model = _label(models.get(f"{node_id} {uuid}", ""))
            labels = f'{{Hostname="{host}",UUID="{_label(uuid)}",gpu="{index}",modelName="{model}",node="{name}"}} '
            for k, family, _, _, scale in wanted:
                value = last_xid if slots[k] is None else values[slots[k]]
                if value is not None:
                    value = float(value * scale)  # floatToGoString differs from repr only outside (-1e6, 1e6)
                    text = repr(value) if -1e6 < value < 1e6 else floatToGoString(value)
                    lines[k].append(f"{family}{labels}{text}\n")
            used, total = values[USED], values[TOTAL]
            if free_wanted and used is not None and total is not None:
                free.append(f"{FB_FREE[0]}{labels}{floatToGoString(max(0, total - used) / MIB)}\n")
    parts = []
    for k, family, text, _, _ in wanted:
        parts.append(f"# HELP {family} {text}\n# TYPE {family} gauge\n")
        parts.extend(lines[k])
    if free_wanted:
        parts.append(f"# HELP {FB_FREE[0]} {FB_FREE[1]}\n# TYPE {FB_FREE[0]} gauge\n")
        parts.extend(free)
    return "".join(parts)


class FleetCollector:
    """A prometheus_client collector built per scrape from the database and the telemetry store (all but the
    DCGM families: dcgm_text). ``names`` (``?name[]=…``, as prometheus_client's own exposition) limits it to
    those families."""

    def __init__(self, names: list[str] | None = None, nodes: dict[int, dict] | None = None) -> None:
        self.names = set(names or ())
        self.nodes = nodes

    def collect(self) -> Iterator[Metric]:
        counters = get_store().counters()
        nodes = self.nodes if self.nodes is not None else node_rows()
        families: Iterator[Metric] = itertools.chain(self._fleet(nodes, counters), gateway_stats.families(),
                                                     *(source() for source in EXTRA_FAMILIES))
        for family in families:
            if _wanted(self.names, family.name):
                yield family

    def _fleet(self, nodes: dict[int, dict], counters: dict[str, float]) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("fleet_nodes", "Enrolled nodes by status.", labels=["status"])
        counts = {status: 0 for status in NodeStatus.values}
        for node in nodes.values():
            counts[node["status"]] = counts.get(node["status"], 0) + 1
        for status, count in counts.items():
            by_status.add_metric([status], count)
        yield by_status
        seen = GaugeMetricFamily("fleet_node_last_seen_timestamp_seconds",
                                 "Unix time of the last frame from the node's agent.", labels=["node"])
        for node in sorted(nodes.values(), key=lambda n: n["name"]):
            if node["last_seen"] is not None:
                seen.add_metric([node["name"]], node["last_seen"].timestamp())
        yield seen
        gpus = GaugeMetricFamily("fleet_gpus", "GPUs known to the inventory by state.", labels=["state"])
        gpu_counts = dict(Gpu.objects.values_list("state").annotate(n=Count("id")).order_by())
        for state in GpuState.values:
            gpus.add_metric([state], gpu_counts.get(state, 0))
        yield gpus
        alerts = GaugeMetricFamily("fleet_alerts_open", "Open alerts by severity.", labels=["severity"])
        open_counts = dict(Alert.objects.filter(resolved_at__isnull=True).values_list("severity")
                           .annotate(n=Count("id")).order_by())
        for severity in AlertSeverity.values:
            alerts.add_metric([severity], open_counts.get(severity, 0))
        yield alerts
        yield GaugeMetricFamily("fleet_agent_connections", "Agent websocket connections open (all server processes).",
                                value=counters.get("connections", 0))
        for name, key, text in (
            ("fleet_telemetry_frames", "frames", "Metrics frames accepted."),
            ("fleet_telemetry_catchup_points", "points", "Buffered samples accepted in catch-up batches."),
            ("fleet_telemetry_received_bytes", "bytes", "Bytes of accepted metrics frames."),
            ("fleet_telemetry_frames_dropped", "dropped", "Agent frames dropped over a frame-rate budget."),
            ("fleet_telemetry_frames_rejected", "rejected", "Metrics frames refused as too large."),
            ("fleet_telemetry_agent_buffer_dropped", "agent_dropped",
             "Samples agents dropped (oldest first) from their bounded buffers while disconnected."),
        ):
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))


def node_rows() -> dict[int, dict[str, Any]]:
    return {n["id"]: n for n in Node.objects.values("id", "name", "hostname", "status", "last_seen")}


def _authorized(request: HttpRequest) -> bool:
    key = request_bearer(request)
    if key:
        return authenticate_api_key(key, "metrics") is not None
    return address_allowed(request.META.get("REMOTE_ADDR"), settings.FLEET_METRICS_ALLOW)


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse(
            "401 Unauthorized: send 'Authorization: Bearer <API key with the metrics scope>' "
            "(python manage.py createapikey --user U --scope metrics), or scrape from an address in "
            "FLEET_METRICS_ALLOW.\n",
            status=401, content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="fleet-metrics"'
        return response
    names = request.GET.getlist("name[]")
    nodes = node_rows()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(names, nodes))
    body = dcgm_text(set(names), nodes).encode() + generate_latest(registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


metrics.public = True  # authenticated by API key or address, not by session: see _authorized

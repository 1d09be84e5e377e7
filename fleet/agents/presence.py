"""What the server learns from an agent connection: facts from `hello`, liveness, offline detection.

Liveness is kept without a DB write per frame: a connection remembers when it last heard from the
agent and writes `last_seen` at most once per heartbeat interval. A node goes offline only when
`last_seen` is older than FLEET_OFFLINE_AFTER (checked by the sweeper), never on a mere disconnect,
so a quick reconnect or a replaced connection does not flap the status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet import events
from fleet.agent.protocol import Hello
from fleet.hub import commands as hub_commands
from fleet.inventory import runtimes, sites, summary
from fleet.inventory.models import Gpu, GpuState, Node, NodeKind, NodeStatus, SiteCache
from fleet.inventory.services import publish_node, set_status
from fleet.lib.errors import FieldError
from fleet.telemetry import records as telemetry_records

log = logging.getLogger(__name__)

MAX_LOST_GPUS = 32  # lost GPU rows kept per node beyond the present ones (newest first)


# What record_hello stores from a hello. Of its runtimes only what routing depends on: their counters and
# logs move all the time, and the reconnect that skips the transaction rewrites them (fleet/agents/arrivals.py).
DIGEST_FIELDS = {"agent_version", "host", "gpus", "gpu_note", "installed", "active", "site_cache"}
SERVING_SHAPE = {"runtime", "repo", "sha", "state", "reason", "port"}


def serving_shape(serving: list[Any]) -> list[dict]:
    """The part of runtime reports that a stored hello digest covers."""
    return [status.model_dump(mode="json", include=SERVING_SHAPE) for status in serving]


def hello_digest(hello: Hello) -> str:
    """sha256 of the hello's stored facts as canonical JSON: equal digests, nothing for record_hello to change
    but last_seen and runtime counters."""
    facts = {**hello.model_dump(mode="json", include=DIGEST_FIELDS), "serving": serving_shape(hello.serving)}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def record_runtimes(node_id: int, serving: list[Any], forget_digest: bool = False) -> None:
    """A `runtime` frame; ``forget_digest`` when its runtimes differ from the stored hello's (not just in
    counters): the next hello must then be stored in full, not skipped as unchanged."""
    runtimes.replace_runtimes(node_id, serving)
    if forget_digest:
        Node.objects.filter(pk=node_id).update(hello_digest="")


def record_hello(node_id: int, hello: Hello, now: datetime | None = None) -> Node:
    """Upsert the node's facts and GPUs in one transaction, then mark it online.

    Raises FieldError (nothing stored) when the hello claims a GPU that another online node reports.
    """
    now = now or timezone.now()
    host = hello.host
    digest = hello_digest(hello)
    with transaction.atomic():
        _check_gpu_owners(node_id, hello)
        node = Node.objects.select_for_update().get(pk=node_id)
        node.hostname = host.hostname
        node.os = host.os
        node.arch = host.arch
        node.cpu_count = host.cpu_count
        node.memory_bytes = host.memory_bytes
        node.disk_bytes = host.disk_bytes
        node.agent_version = hello.agent_version
        node.gpu_note = (hello.gpu_note or "")[:300]
        if host.kind and not (node.kind == NodeKind.EDGE_DEVICE and host.kind != NodeKind.EDGE_DEVICE):
            # The agent types the node by what it finds (GPUs, a Jetson, neither); "edge device" is
            # about where a node stands, so an edge box with a discrete GPU or none stays an edge device.
            node.kind = host.kind
        if host.labels:
            node.labels = {**node.labels, **host.labels}
        node.last_seen = now
        node.hello_digest = digest
        node.save()
        changed_site = sites.register(node, hello.site_cache)
        _upsert_gpus(node, hello, now)
        if not set_status(node.pk, NodeStatus.ONLINE, last_seen=now):
            publish_node(node)  # GPUs, memory or kind may have changed with the status unchanged
        if not hub_commands.record_inventory(node.pk, hello.installed, hello.active):
            # a model not imported yet: its row is linked by a later hello, which must not be skipped
            Node.objects.filter(pk=node.pk).update(hello_digest="")
            node.hello_digest = ""
        runtimes.replace_runtimes(node.pk, hello.serving, now)
        # Facts and GPUs may have changed even when the status did not: open node pages redraw.
        events.publish(events.node_live_group(node.pk), {"type": "live.message", "payload": {"kind": "facts"}})
        if changed_site:  # the site's nodes learn of their (new) cache without waiting for a reconnect
            _tell_sites([changed_site], but=node.pk)
    telemetry_records.node_online(node.pk)  # resolves a node-offline alert, if one is open
    if changed_site:
        sites.forget_caches()  # this process's offers (the welcome that follows included) see the change
    return node


def _check_gpu_owners(node_id: int, hello: Hello) -> None:
    """A GPU UUID belongs to one node (two would make duplicate /metrics series). A GPU that an
    online node reports as present is refused; one held by a node that is not online has moved here,
    and is marked lost there."""
    uuids = {info.uuid: n for n, info in enumerate(hello.gpus)}
    if not uuids:
        return
    elsewhere = Gpu.objects.filter(uuid__in=uuids, state=GpuState.PRESENT).exclude(node_id=node_id)
    held = list(elsewhere.values_list("uuid", "node_id", "node__name", "node__status"))
    for uuid, _, owner, owner_status in held:
        if owner_status == NodeStatus.ONLINE:
            raise FieldError(f"gpus.{uuids[uuid]}.uuid",
                             f"GPU {uuid} is reported by the online node {owner}; a GPU UUID belongs to one node")
    if held:
        # the nodes that lose a GPU here must store their next hello in full, not skip it as unchanged
        Node.objects.filter(pk__in={owner_id for _, owner_id, _, _ in held}).update(hello_digest="")
        elsewhere.update(state=GpuState.LOST)


def prune_lost_gpus(now: datetime | None = None) -> int:
    """Delete GPU rows lost for longer than FLEET_METRICS_RETENTION (an engine task)."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.FLEET_METRICS_RETENTION)
    deleted, _ = Gpu.objects.filter(state=GpuState.LOST, last_seen__lt=cutoff).delete()
    if deleted:
        log.info("deleted %d GPUs lost since before %s", deleted, cutoff)
    return deleted


def _upsert_gpus(node: Node, hello: Hello, now: datetime) -> None:
    existing = {gpu.uuid: gpu for gpu in node.gpus.all()}
    reported = {info.uuid for info in hello.gpus}
    to_create, to_update = [], []
    for info in hello.gpus:
        gpu = existing.get(info.uuid) or Gpu(node=node, uuid=info.uuid)
        gpu.index = info.index
        gpu.name = info.name
        gpu.memory_total_bytes = info.memory_total_bytes
        gpu.driver_version = info.driver_version or ""
        gpu.cuda_version = info.cuda_version or ""
        gpu.mig_mode = info.mig_mode
        gpu.state = GpuState.PRESENT
        gpu.last_seen = now
        (to_update if gpu.pk else to_create).append(gpu)
    for uuid, gpu in existing.items():
        if uuid not in reported and gpu.state != GpuState.LOST:
            gpu.state = GpuState.LOST  # kept, not deleted: an operator must see that a GPU vanished
            to_update.append(gpu)
    fields = ["index", "name", "memory_total_bytes", "driver_version", "cuda_version", "mig_mode", "state",
              "last_seen"]
    if to_update:
        Gpu.objects.bulk_update(to_update, fields)
    if to_create:
        Gpu.objects.bulk_create(to_create)
    # A node that keeps reporting fresh UUIDs (broken or hostile) must not grow its GPU rows forever.
    lost = Gpu.objects.filter(node=node, state=GpuState.LOST).order_by("-last_seen", "-pk")
    stale = list(lost.values_list("pk", flat=True)[MAX_LOST_GPUS:])
    if stale:
        Gpu.objects.filter(pk__in=stale).delete()


def _tell_sites(names, but: int | None = None) -> None:
    """The nodes of these sites: their cache came, changed or went (each connection sends a ``site`` frame)."""
    sites.tell([other for other in sites.neighbours_of(names) if other != but])


def record_seen(node_id: int, now: datetime | None = None) -> None:
    """A frame arrived: refresh last_seen, and bring the node back online if the sweeper had given up."""
    now = now or timezone.now()
    updated = Node.objects.filter(pk=node_id, status=NodeStatus.ONLINE).update(last_seen=now)
    if not updated and set_status(node_id, NodeStatus.ONLINE, expect=NodeStatus.OFFLINE, last_seen=now):
        _tell_sites(SiteCache.objects.filter(node_id=node_id).values_list("site", flat=True), but=node_id)


def sweep_offline(now: datetime | None = None) -> list[int]:
    """Mark nodes offline whose last frame is older than FLEET_OFFLINE_AFTER. Returns their ids."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.FLEET_OFFLINE_AFTER)
    stale = list(
        Node.objects.filter(status=NodeStatus.ONLINE, last_seen__lt=cutoff).values_list("pk", flat=True)
    )
    gone = []
    for node_id in stale:
        # The CAS repeats the staleness test, so a frame that just arrived wins over the sweep.
        if set_status(node_id, NodeStatus.OFFLINE, expect=NodeStatus.ONLINE, seen_before=cutoff):
            gone.append(node_id)
    if gone:
        log.info("nodes offline after %.0fs without a frame: %s", settings.FLEET_OFFLINE_AFTER, gone)
        telemetry_records.node_offline(gone)
        _tell_sites(SiteCache.objects.filter(node_id__in=gone).values_list("site", flat=True))
    return gone


_sweepers: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def sweep_interval() -> float:
    return max(0.5, min(5.0, settings.FLEET_OFFLINE_AFTER / 5))


def ensure_sweeper() -> None:
    """Run the background loops of a server process (one task per event loop, started by the first
    websocket): the offline sweep and the coalesced fleet summary.

    Only where the engine does not run inside this process (FLEET_EMBEDDED_ENGINE off, PostgreSQL):
    there each server process sweeps and summarises its own changes; the compare-and-set makes each
    change happen (and publish) once.
    """
    if settings.FLEET_EMBEDDED_ENGINE:
        return  # the engine inside this process runs both (fleet.engine.ensure_embedded)
    loop = asyncio.get_running_loop()
    task = _sweepers.get(loop)
    if task is None or task.done():
        summary.loop_started()
        _sweepers[loop] = loop.create_task(_background())


async def _background() -> None:
    loops = [_every(summary.INTERVAL, summary.publish_if_stale, "fleet summary", when=summary.is_stale)]
    if settings.FLEET_PRESENCE_SWEEP:
        loops.append(_every(sweep_interval(), sweep_offline, "offline sweep"))
    await asyncio.gather(*loops)


async def _every(interval: float, function, name: str, when=None) -> None:
    run = database_sync_to_async(function)
    while True:
        await asyncio.sleep(interval)
        if when is not None and not when():
            continue  # nothing to do: skip the thread hop
        try:
            await run()
        except Exception:
            log.exception("%s failed; retrying", name)

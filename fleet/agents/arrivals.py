"""Reconnect storms without a query per agent (issue 11): after a server restart every agent says hello again
with the facts the database already holds.

A hello whose digest (presence.hello_digest) equals the one stored with the node skips the hello transaction:
the node is queued here, and the telemetry flusher's next tick (fleet/telemetry/flusher.py) writes every
node queued since in a fixed number of statements (`write`). The welcome's site offer comes from this
process's copy of the site caches (`site_offer`), and the check for unfinished commands is one query per
tick for all new connections (consumers._poll_commands with `hub_commands.nodes_with_unfinished`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone

from fleet.agent.protocol import SiteCacheOffer
from fleet.inventory import runtimes, sites
from fleet.inventory.models import Gpu, GpuState, Node, NodeStatus, SiteCache
from fleet.inventory.services import bring_online
from fleet.telemetry import records as telemetry_records

# node id → its hello's `serving` list (None: newer runtimes were stored since), until the next tick writes it
_arrived: dict[int, list[Any] | None] = {}
_loads: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def arrive(node_id: int, serving: list[Any]) -> None:
    """A hello with unchanged facts: the node comes online with the flusher's next tick."""
    _arrived[node_id] = list(serving)


def runtimes_stored(node_id: int) -> None:
    """Runtimes newer than the queued hello's were stored (a `runtime` frame, a full hello): the tick must
    not write the older ones over them."""
    if node_id in _arrived:
        _arrived[node_id] = None


def pending() -> bool:
    return bool(_arrived)


def take() -> dict[int, list[Any] | None]:
    """What arrived since the last call (the flusher hands it to `write` in its thread hop)."""
    items = dict(_arrived)
    _arrived.clear()
    return items


def write(arrived: dict[int, list[Any] | None], now: datetime | None = None) -> list[int]:
    """Everything record_hello would have changed for these nodes, in a fixed number of statements whatever
    their number: last_seen, the status of those that were not online (published, their node-offline alerts
    resolved, their sites told when they are a site's cache), their GPUs' last_seen and their runtimes
    (counters move, so the hello's list replaces the rows). Returns the ids of the nodes that came back."""
    if not arrived:
        return []
    now = now or timezone.now()
    with transaction.atomic():
        # deleted or revoked meanwhile: nothing to write (and no runtime row may point at a deleted node)
        present = list(Node.objects.filter(pk__in=list(arrived)).exclude(status=NodeStatus.REVOKED)
                       .values_list("pk", flat=True))
        revived = bring_online(present, now, revive=(NodeStatus.OFFLINE, NodeStatus.NEVER_SEEN))
        Gpu.objects.filter(node_id__in=present, state=GpuState.PRESENT).update(last_seen=now)
        runtimes.replace_many({node_id: arrived[node_id] for node_id in present if arrived[node_id] is not None}, now)
        if revived:
            # a site's cache is back: its site's nodes (itself included, whose welcome offered nothing while it
            # was offline) get a `site` frame
            names = list(SiteCache.objects.filter(node_id__in=revived).values_list("site", flat=True))
            if names:
                sites.tell(sites.neighbours_of(names))
    telemetry_records.nodes_online(revived)
    return revived


_load_caches = database_sync_to_async(sites.load_caches, thread_sensitive=False)


async def site_offer(node_id: int, labels: dict | None) -> SiteCacheOffer | None:
    """`sites.offer_for` without a query per agent: at most one load of the site caches per process and
    heartbeat, shared by every connection that asks meanwhile."""
    if sites.caches_stale():
        loop = asyncio.get_running_loop()
        task = _loads.get(loop)
        if task is None or task.done():
            # A read on the shared pool, not the one ORM thread: behind a storm of first hellos (a transaction
            # each) every welcome would wait for the whole queue.
            task = _loads[loop] = loop.create_task(_load_caches())
        await asyncio.shield(task)
    return sites.cached_offer(node_id, labels)

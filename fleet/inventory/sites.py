"""Sites and their caches: which node serves the model mirror to the nodes sharing its ``site`` label,
what each node of a site is told in ``welcome`` (the cache's URL and a site token), and the cache's counters.
See fleet/lib/sitetoken.py for why neighbours present a site token rather than their node secret."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet import events
from fleet.agent.protocol import CacheReport, SiteCacheAdvert, SiteCacheOffer
from fleet.inventory.models import Node, NodeStatus, SiteCache
from fleet.lib import sitetoken

log = logging.getLogger(__name__)
SITE_LABEL = "site"


def site_of(node: Node) -> str:
    return _site_label(node.labels)


def register(node: Node, advert: SiteCacheAdvert | None) -> str | None:
    """Record (or forget) ``node`` as its site's cache from its hello; the site whose cache changed, if any.
    Call inside the hello's transaction, with ``node.labels`` already updated."""
    site = site_of(node)
    if advert is None or not site:
        if advert is not None:
            log.warning("node %s offers a site cache but has no %r label; ignored", node.name, SITE_LABEL)
        gone = list(SiteCache.objects.filter(node=node).values_list("site", flat=True))
        SiteCache.objects.filter(node=node).delete()
        return gone[0] if gone else None
    SiteCache.objects.filter(node=node).exclude(site=site).delete()
    current = SiteCache.objects.filter(site=site).first()
    if current is not None and current.node_id == node.pk and current.url == advert.url:
        # the same cache again: its site hears of it only if it was offline (``node.status`` is the status
        # before this hello) and so left out of the offers meanwhile
        return None if node.status == NodeStatus.ONLINE else site
    if current is not None and current.node_id != node.pk:
        log.warning("node %s replaces node %s as the site cache of %s", node.name, current.node_id, site)
        # its next hello must be stored in full to take the cache back, not skipped as unchanged
        Node.objects.filter(pk=current.node_id).update(hello_digest="")
    SiteCache.objects.update_or_create(site=site, defaults={"node": node, "url": advert.url,
                                                            "registered_at": timezone.now()})
    return site


def offer_for(node_id: int, now: float | None = None) -> SiteCacheOffer | None:
    """What ``welcome`` (or a ``site`` frame) tells this node about its site's cache; None without one.
    The cache node itself also gets the site key that verifies its neighbours' tokens."""
    node = Node.objects.filter(pk=node_id).first()
    site = site_of(node) if node else ""
    cache = SiteCache.objects.select_related("node").filter(site=site).first() if site else None
    if cache is None or cache.node.status != NodeStatus.ONLINE:
        return None
    key = sitetoken.site_key(settings.SECRET_KEY, site)
    return SiteCacheOffer(site=site, url=cache.url, token=sitetoken.mint(key, node_id, settings.FLEET_SITE_TOKEN_TTL,
                                                                         now),
                          key=key if cache.node_id == node_id else None)


def cached_offer(node_id: int, labels: dict | None, now: float | None = None) -> SiteCacheOffer | None:
    """`offer_for` from this process's copy of the site caches (call `load_caches` first when
    `caches_stale`): no query per agent when a whole site reconnects at once."""
    site = _site_label(labels)
    entry = (_caches or {}).get(site) if site else None
    if entry is None or not entry[2]:
        return None
    key = sitetoken.site_key(settings.SECRET_KEY, site)
    return SiteCacheOffer(site=site, url=entry[1], token=sitetoken.mint(key, node_id, settings.FLEET_SITE_TOKEN_TTL,
                                                                        now),
                          key=key if entry[0] == node_id else None)


_caches: dict[str, tuple[int, str, bool]] | None = None  # site → (cache node id, url, cache node online)
_loaded_at = 0.0  # wall clock, as the time stamped on `agent.site` messages by any process
_changed_at = 0.0  # the latest change this process heard of: a copy loaded before it is stale


def caches_stale() -> bool:
    return (_caches is None or _loaded_at <= _changed_at
            or time.time() - _loaded_at > settings.FLEET_HEARTBEAT_INTERVAL)


def load_caches() -> None:
    """One query for every site's cache; a change made by another process is seen within a heartbeat, or
    at once where one of that site's nodes is connected here (its `agent.site` calls `forget_caches`)."""
    global _caches, _loaded_at
    if not caches_stale():
        return  # loaded by a call queued before this one
    loaded_at = time.time()
    _caches = {site: (node_id, url, status == NodeStatus.ONLINE) for site, node_id, url, status in
               SiteCache.objects.values_list("site", "node_id", "url", "node__status")}
    _loaded_at = loaded_at


def forget_caches(changed_at: float | None = None) -> None:
    """A site's cache changed at ``changed_at`` (wall clock, default now): a copy loaded before is stale."""
    global _changed_at
    _changed_at = max(_changed_at, changed_at if changed_at is not None else time.time())


def _site_label(labels: dict | None) -> str:
    site = (labels or {}).get(SITE_LABEL)
    return site if isinstance(site, str) and 0 < len(site) <= 63 else ""


def neighbours_of(site_names) -> list[int]:
    """Ids of the nodes labelled with any of these sites (one query)."""
    names = list(set(site_names))
    if not names:
        return []
    return list(Node.objects.filter(**{f"labels__{SITE_LABEL}__in": names}).values_list("pk", flat=True))


def tell(node_ids: list[int]) -> None:
    """After commit, an `agent.site` to these nodes' connections (each sends a ``site`` frame), stamped with
    the time it is sent: a process's copy of the caches loaded before it is stale (`forget_caches`)."""
    def send() -> None:
        message = {"type": "agent.site", "at": time.time()}
        events.publish_many([(events.node_group(node_id), message) for node_id in node_ids])

    if node_ids:
        transaction.on_commit(send)


def record_report(node_id: int, report: CacheReport, now: datetime | None = None) -> bool:
    """Store a cache's counters; False when the node is no site's cache (nothing stored)."""
    fields = report.model_dump(exclude={"type", "v"})
    return bool(SiteCache.objects.filter(node_id=node_id).update(**fields, reported_at=now or timezone.now()))


@dataclass
class SiteRow:
    site: str
    nodes: int
    online: int
    cache: SiteCache | None


def site_rows() -> list[SiteRow]:
    """Every site label in use, its node counts and its cache (the Sites page)."""
    counts: dict[str, list[int]] = {}
    for labels, status in Node.objects.values_list("labels", "status"):
        site = (labels or {}).get(SITE_LABEL)
        if isinstance(site, str) and site:
            entry = counts.setdefault(site, [0, 0])
            entry[0] += 1
            entry[1] += status == NodeStatus.ONLINE
    caches = {cache.site: cache for cache in SiteCache.objects.select_related("node")}
    return [SiteRow(site=site, nodes=counts.get(site, [0, 0])[0], online=counts.get(site, [0, 0])[1],
                    cache=caches.get(site)) for site in sorted(set(counts) | set(caches))]

"""Sites and their caches: which node serves the model mirror to the nodes sharing its ``site`` label,
what each node of a site is told in ``welcome`` (the cache's URL and a site token), and the cache's counters.
See fleet/lib/sitetoken.py for why neighbours present a site token rather than their node secret."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from fleet.agent.protocol import CacheReport, SiteCacheAdvert, SiteCacheOffer
from fleet.inventory.models import Node, NodeStatus, SiteCache
from fleet.lib import sitetoken

log = logging.getLogger(__name__)
SITE_LABEL = "site"


def site_of(node: Node) -> str:
    site = (node.labels or {}).get(SITE_LABEL)
    return site if isinstance(site, str) and 0 < len(site) <= 63 else ""


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


def neighbours(site: str) -> list[int]:
    """Ids of the nodes labelled with ``site``."""
    return list(Node.objects.filter(**{f"labels__{SITE_LABEL}": site}).values_list("pk", flat=True))


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

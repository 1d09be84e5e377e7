"""The server side of site caches: a cache node registers in hello, its site's nodes are told in welcome (and,
when already connected, by a ``site`` frame) with a site token the cache's key verifies, the cache's reports
are stored, and the Sites page shows them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from fleet.agents.presence import record_seen, sweep_offline
from fleet.inventory.models import SiteCache
from fleet.lib import sitetoken
from tests.server.test_agent_socket import connect_and_hello, hello

pytestmark = pytest.mark.django_db(transaction=True)
URL = "http://10.7.0.5:8900"


def site_hello(cache: bool = False) -> dict:
    frame = hello(gpus=0, labels={"site": "plant-7"})
    if cache:
        frame["site_cache"] = {"url": URL}
    return frame


async def receive_type(comm, kind: str) -> dict:
    for _ in range(20):
        frame = await comm.receive_json_from(timeout=5)
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


async def test_cache_registers_and_its_site_is_told(make_node, client, charlie):
    make = database_sync_to_async(make_node)
    (early, early_secret), (cache, cache_secret), (late, late_secret) = [await make(n) for n in ("n1", "c", "n2")]
    other, other_secret = await make("elsewhere")

    first = await connect_and_hello(early_secret, site_hello())  # no cache yet: no offer
    cache_comm = await connect_and_hello(cache_secret, site_hello(cache=True))
    assert await database_sync_to_async(SiteCache.objects.filter(site="plant-7", node=cache, url=URL).exists)()
    key = sitetoken.site_key(settings.SECRET_KEY, "plant-7")

    told = await receive_type(first, "site")  # the node already connected learns of its new cache
    assert told["site_cache"]["url"] == URL and "key" not in told["site_cache"]
    assert sitetoken.verify(key, told["site_cache"]["token"]) == early.pk

    late_comm = await connect_and_hello(late_secret, site_hello())
    await late_comm.send_json_to(site_hello())
    welcome = await receive_type(late_comm, "welcome")
    offer = welcome["site_cache"]
    assert offer["site"] == "plant-7" and offer.get("key") is None and sitetoken.verify(key, offer["token"]) == late.pk

    await cache_comm.send_json_to(site_hello(cache=True))
    own = (await receive_type(cache_comm, "welcome"))["site_cache"]
    assert own["key"] == key  # only the cache node holds the key that checks its neighbours' tokens

    elsewhere = await connect_and_hello(other_secret, hello(gpus=0, labels={"site": "plant-8"}))
    await elsewhere.send_json_to(hello(gpus=0, labels={"site": "plant-8"}))
    assert (await receive_type(elsewhere, "welcome")).get("site_cache") is None

    await cache_comm.send_json_to({"type": "cache", "v": 1, "disk_bytes": 3 << 30, "blobs": 4, "hits": 12,
                                   "misses": 4, "bytes_served": 4 << 30, "bytes_upstream": 1 << 30})
    await cache_comm.send_json_to({"type": "cache", "v": 1, "bytes_served": -1})  # refused, nothing stored
    assert (await receive_type(cache_comm, "error"))["detail"].startswith("bytes_served")
    row = await database_sync_to_async(SiteCache.objects.get)(site="plant-7")
    assert (row.disk_bytes, row.hits, row.hit_percent) == (3 << 30, 12, 75.0)

    await database_sync_to_async(client.force_login)(charlie)
    page = (await database_sync_to_async(client.get)("/sites/")).content.decode()
    assert 'data-site="plant-7"' in page and "3.0 GiB" in page and "75 %" in page and URL in page
    assert 'data-site="plant-8"' in page and "no cache: every node pulls from the server" in page

    # the cache node goes silent: its site is told there is no cache; back, it is told again
    later = timezone.now() + timedelta(seconds=settings.FLEET_OFFLINE_AFTER + 60)
    await database_sync_to_async(lambda: sweep_offline(later))()
    assert (await receive_type(first, "site")).get("site_cache") is None
    await database_sync_to_async(record_seen)(cache.pk)
    assert (await receive_type(first, "site"))["site_cache"]["url"] == URL

    await cache_comm.send_json_to(site_hello())  # restarted without --site-cache: no longer the cache
    await receive_type(cache_comm, "welcome")
    assert not await database_sync_to_async(SiteCache.objects.exists)()
    assert (await receive_type(first, "site")).get("site_cache") is None
    for comm in (first, cache_comm, late_comm, elsewhere):
        await comm.disconnect()

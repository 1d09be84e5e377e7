"""Site-cache frames and fields (issue 12): a cache agent advertises itself in ``hello`` and reports its
counters in ``cache`` frames; the server tells a site's nodes where their cache is in ``welcome`` and ``site``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fleet.agent.protocol_base import Count, NonNegInt, Text, _Frame, _Model


class SiteCacheAdvert(_Model):
    """In ``hello``: this agent serves the mirror to its site's nodes (``fleet-agent run --site-cache``)."""

    url: Annotated[str, Field(max_length=200, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]  # what neighbours dial


class SiteCacheOffer(_Model):
    """In ``welcome``: the site's cache. Nodes pull from ``url`` presenting ``token``; the cache node itself
    also gets ``key``, which verifies its neighbours' tokens (fleet.lib.sitetoken)."""

    site: Text(63, min_length=1)
    url: Annotated[str, Field(max_length=200, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")] | None = None
    token: Annotated[str, Field(max_length=200, pattern=r"^fst1\.[0-9]+\.[0-9]+\.[0-9a-f]{64}$")] | None = None
    key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class CacheReport(_Frame):
    """From a site cache, every few seconds: what it holds and how much it saved the WAN."""

    type: Literal["cache"]
    disk_bytes: NonNegInt = 0
    blobs: Count = 0
    hits: NonNegInt = 0  # blob requests answered from disk
    misses: NonNegInt = 0  # blob requests that waited on a fetch from the server
    bytes_served: NonNegInt = 0  # to neighbours
    bytes_upstream: NonNegInt = 0  # from the server
    fetching: Count = 0
    errors: NonNegInt = 0  # upstream fetches that failed (or failed verification)


class Site(_Frame):
    """The site's cache changed (one registered, or went away: ``site_cache`` None)."""

    type: Literal["site"]
    site_cache: SiteCacheOffer | None = None

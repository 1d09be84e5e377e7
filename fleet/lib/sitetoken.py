"""Site tokens: how a site cache knows that a neighbour asking it for blobs is a node of its site.

A node's own secret cannot be checked by the cache (only the server holds its hash), and a node must never
hand its secret to a peer. So the server derives one key per site from its SECRET_KEY and gives it, in
``welcome``, to that site's cache node only; every node of the site gets a short-lived token
``fst1.<node id>.<expiry>.<hmac(site key, "<node id>.<expiry>")>`` in its own ``welcome`` and presents it to the
cache. The cache checks it offline. A leaked token works for one site, for its TTL, and only for reading what
the mirror serves (which the cache node itself can read anyway); the site key cannot reach the server.
Pure functions shared by the server and the agent (no Django).
"""

from __future__ import annotations

import hashlib
import hmac
import time

PREFIX = "fst1"


def site_key(secret: str, site: str) -> str:
    """The per-site verification key (hex), derived from the server's secret."""
    return hmac.new(secret.encode(), f"fleet.site-cache:{site}".encode(), hashlib.sha256).hexdigest()


def _mac(key: str, node_id: int, expires: int) -> str:
    return hmac.new(bytes.fromhex(key), f"{node_id}.{expires}".encode(), hashlib.sha256).hexdigest()


def mint(key: str, node_id: int, ttl: float, now: float | None = None) -> str:
    """A token for ``node_id``, valid ``ttl`` seconds."""
    expires = int((time.time() if now is None else now) + ttl)
    return f"{PREFIX}.{node_id}.{expires}.{_mac(key, node_id, expires)}"


def verify(key: str, token: str, now: float | None = None) -> int | None:
    """The node id a valid, unexpired token names; None for anything else."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    node_id, expires = int(parts[1]), int(parts[2])
    try:
        good = hmac.compare_digest(parts[3], _mac(key, node_id, expires))
    except ValueError:  # a key that is not hex
        return None
    if not good or expires < (time.time() if now is None else now):
        return None
    return node_id

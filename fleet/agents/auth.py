"""ASGI middleware for the agent socket: authenticate the node secret before any frame is read."""

from __future__ import annotations

from channels.db import database_sync_to_async

from fleet.inventory.services import authenticate_node
from fleet.lib.http import scope_bearer

# A read-only lookup, run on the shared thread pool rather than the one thread Channels keeps for ORM
# work: during a reconnect storm handshakes would otherwise queue behind every agent's hello upsert
# and hit Daphne's handshake timeout.
_lookup = database_sync_to_async(authenticate_node, thread_sensitive=False)


class NodeSecretMiddleware:
    """Puts the node's active credential (or None) into ``scope["fleet_credential"]``.

    The consumer refuses the handshake (HTTP 403) when it is None, so an unknown or revoked secret
    never gets a frame read.
    """

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        secret = scope_bearer(scope.get("headers", []))
        scope["fleet_credential"] = await _lookup(secret) if secret else None
        return await self.inner(scope, receive, send)

"""Whether a node can take a model command now, and why not: the pages disable Deploy and Activate with
this reason, and the views refuse with it (a revoked node never reconnects; an offline one would only
queue the command until it returns)."""

from __future__ import annotations

from typing import Any

from fleet.inventory.models import NodeStatus


def unreachable_reason(node: Any) -> str | None:
    """None when ``node`` is reachable (online, or never seen yet: its first connection gets the command)."""
    if node.status == NodeStatus.REVOKED:
        return f"{node.name} is revoked: it can no longer receive commands"
    if node.status == NodeStatus.OFFLINE:
        return f"{node.name} is offline: its agent must reconnect first"
    return None

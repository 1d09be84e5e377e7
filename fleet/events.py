"""Publishing to channel-layer groups after commit, the group names, and who may join which group.

Domain code never talks to consumers directly: it saves, then publishes here; the message is sent only
once the transaction commits (AWX style), so browsers never see state the database does not hold.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

FLEET_GROUP = "fleet"  # node status changes and the fleet summary, for every logged-in viewer


def node_group(node_id: int) -> str:
    """Commands and control messages for one node's agent connection."""
    return f"node.{node_id}"


def node_live_group(node_id: int) -> str:
    """Live updates of one node's detail page."""
    return f"live.node.{node_id}"


def user_group(user_id: int) -> str:
    """Control messages for one user's open browser sockets (closed when their access changes)."""
    return f"user.{user_id}"


def publish(group: str, message: dict[str, Any]) -> None:
    """Send ``message`` to ``group`` after the current transaction commits (at once outside one)."""
    publish_many([(group, message)])


def publish_many(messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Send each ``(group, message)`` after the current transaction commits, in order, through one hop to
    the channel layer's event loop (a thousand commands of one rollout pass: one hop, not a thousand)."""
    if not messages:
        return
    batch = list(messages)

    async def send_all(layer: Any) -> None:
        for group, message in batch:
            try:
                await layer.group_send(group, message)
            except Exception:  # a lost message is repaired by the next poll/reconnect; never fail the save
                log.exception("publish to %s failed", group)

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(send_all)(layer)
        except Exception:
            log.exception("publishing %d message(s) failed", len(batch))

    transaction.on_commit(send)


_LIVE_TOPIC = re.compile(r"^(fleet|node:(\d{1,12}))$")


def live_group_for_topic(user: Any, topic: str) -> str | None:
    """Map a browser's subscription topic to a group, or None if unknown or not permitted.

    Topics: ``fleet`` (overview and node list) and ``node:<id>`` (one node's page). Every role can
    view the whole fleet; a user without a role (an outsider) can join nothing.
    """
    if not isinstance(topic, str):
        return None
    match = _LIVE_TOPIC.match(topic)
    if not match or not getattr(user, "is_authenticated", False) or not user.has_role("viewer"):
        return None
    if match.group(2):
        return node_live_group(int(match.group(2)))
    return FLEET_GROUP

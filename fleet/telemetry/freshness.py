"""When a node's telemetry counts as live: the one rule that /metrics, the pages and their JSON share.

A node's latest values are live only while the node is online and its newest frame is younger than
``stale_after()``. Otherwise pages say "no data since <time of the newest frame>" and /metrics leaves
the node's series out, instead of repeating the last values as if they were current.
"""

from __future__ import annotations

import time

from django.conf import settings

from fleet.inventory.models import NodeStatus


def stale_after() -> float:
    """Latest values older than this (seconds) are not shown or exported: the node stopped reporting."""
    return max(30.0, 2 * settings.FLEET_OFFLINE_AFTER)


def is_live(status: str, frame_ts: float | None, now: float | None = None) -> bool:
    """Whether a node with this status and newest frame time (server clock) reports live values."""
    if status != NodeStatus.ONLINE or not frame_ts:
        return False
    return frame_ts >= (time.time() if now is None else now) - stale_after()

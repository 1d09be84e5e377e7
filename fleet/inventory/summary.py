"""The fleet summary pushed to browsers, coalesced per process.

Computing the summary scans every node and GPU, so doing it for each status change makes a
reconnect storm of N agents cost O(N²). Changes only mark it stale; a loop in each server process
(and the engine) publishes it at most once per interval. A process that runs no such loop (a
management command, a plain WSGI test client) publishes at once, as before.
"""

from __future__ import annotations

import threading

from fleet import events
from fleet.inventory.queries import fleet_summary

INTERVAL = 1.0

_stale = threading.Event()
_loop_running = threading.Event()


def mark_stale() -> None:
    if _loop_running.is_set():
        _stale.set()
    else:
        publish()


def is_stale() -> bool:
    return _stale.is_set()


def publish() -> None:
    payload = {"kind": "summary", "summary": fleet_summary()}
    events.publish(events.FLEET_GROUP, {"type": "live.message", "payload": payload})


def publish_if_stale() -> bool:
    if not _stale.is_set():
        return False
    _stale.clear()  # before computing: a change during the computation marks it stale again
    publish()
    return True


def loop_started() -> None:
    _loop_running.set()

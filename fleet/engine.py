"""The engine: Fleet's background loop (`manage.py engine`). One engine leads at a time.

Tasks are (name, interval seconds, function) tuples; each function is idempotent and makes its changes
with compare-and-set updates, so a task that runs twice (a leader change, a sweeper inside Daphne)
does no harm.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator

from django.conf import settings
from django.db import close_old_connections, connection

from fleet.agents import presence
from fleet.hub import sync as hub_sync
from fleet.inventory import summary
from fleet.telemetry import records as telemetry_records

log = logging.getLogger("fleet.engine")

Task = tuple[str, float, Callable[[], object]]
_LOCK_KEY = zlib.crc32(b"fleet.engine")  # advisory lock id shared by every engine of one database


def tasks() -> list[Task]:
    return [
        ("offline-sweep", presence.sweep_interval(), presence.sweep_offline),
        ("fleet-summary", summary.INTERVAL, summary.publish_if_stale),
        ("telemetry-retention", 3600.0, telemetry_records.prune),
        ("lost-gpu-retention", 3600.0, presence.prune_lost_gpus),
        ("hub-sync", 2.0, hub_sync.tick),
    ]


@contextlib.contextmanager
def leadership(stop: threading.Event, poll: float = 5.0) -> Iterator[bool]:
    """Wait until this process leads (PostgreSQL advisory lock, or a file lock for SQLite)."""
    if connection.vendor == "postgresql":
        while not stop.is_set():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [_LOCK_KEY])
                if cursor.fetchone()[0]:
                    break
            log.info("another engine leads; waiting")
            stop.wait(poll)
        try:
            yield not stop.is_set()
        finally:
            with contextlib.suppress(Exception), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
        return
    settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(settings.VAR_DIR / "engine.lock", "w") as handle:
        while not stop.is_set():
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                log.info("another engine leads; waiting")
                stop.wait(poll)
        yield not stop.is_set()


def run(stop: threading.Event, task_list: list[Task] | None = None, once: bool = False) -> None:
    """Run every task on its interval until ``stop`` is set (or one round, with ``once``)."""
    task_list = task_list if task_list is not None else tasks()
    due = {name: 0.0 for name, _, _ in task_list}
    with leadership(stop) as leading:
        if not leading:
            return
        summary.loop_started()  # changes made here are summarised by the fleet-summary task
        log.info("engine leading: %s", ", ".join(name for name, _, _ in task_list))
        while not stop.is_set():
            for name, interval, function in task_list:
                if time.monotonic() < due[name]:
                    continue
                close_old_connections()
                try:
                    function()
                except Exception:
                    log.exception("engine task %s failed; it runs again next interval", name)
                due[name] = time.monotonic() + interval
            if once:
                return
            stop.wait(max(0.1, min(due.values()) - time.monotonic()))

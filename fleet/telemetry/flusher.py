"""The timer behind ingest: every FLUSH_INTERVAL it measures event-loop lag (load shedding), closes
finished minutes, copies changed nodes to Redis in one pipeline (production), and hands rollups and
alerts to one thread hop for the database (never more than one in flight)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings

from fleet.lib.memory import Trimmer
from fleet.telemetry import records
from fleet.telemetry.limits import Shedder
from fleet.telemetry.live import live_telemetry
from fleet.telemetry.store import get_store

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25  # also the delay Redis adds between an agent and a dashboard on another process
DB_INTERVAL = 2.0

_flushers: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}
shedder: Shedder | None = None


def get_shedder() -> Shedder:
    global shedder
    if shedder is None:
        shedder = Shedder(settings.FLEET_TELEMETRY_SHED_LAG)
    return shedder


def metrics_interval() -> float:
    """The interval agents are told now: the configured one, longer while this process sheds load."""
    return get_shedder().interval(settings.FLEET_METRICS_INTERVAL)


class Arrivals(Protocol):
    """Hellos with unchanged facts waiting for their bulk write (fleet.agents.arrivals registers itself:
    the agents app sits above telemetry in the layers)."""

    def pending(self) -> bool: ...
    def take(self) -> dict[int, list]: ...
    def write(self, arrived: dict[int, list]) -> None: ...


_arrivals: Arrivals | None = None


def register_arrivals(source: Arrivals) -> None:
    global _arrivals
    _arrivals = source


def ensure_flusher() -> None:
    """One flusher per event loop, started by the first agent connection."""
    live_telemetry.temp_threshold = settings.FLEET_GPU_TEMP_ALERT_C
    loop = asyncio.get_running_loop()
    task = _flushers.get(loop)
    if task is None or task.done():
        _flushers[loop] = loop.create_task(_flush_forever())


def write_db(rollups: list[dict], alerts: list[dict], seen: list[int] | None = None,
             arrived: dict[int, list] | None = None) -> None:
    """One thread hop's worth of writes; each part fails on its own (logged), the others still land. Each
    runs a fixed number of statements whatever the number of nodes (rollups: one INSERT per thousand rows)."""
    write_arrivals = _arrivals.write if _arrivals is not None else None
    for what, write, items in (("arrivals", write_arrivals, arrived), ("last_seen", records.mark_seen, seen),
                               ("rollups", records.write_rollups, rollups), ("alerts", records.record_alerts, alerts)):
        if not items or write is None:
            continue
        try:
            write(items)
        except Exception:
            log.exception("writing %d %s failed; dropped", len(items), what)


async def _flush_forever() -> None:
    loop = asyncio.get_running_loop()
    store = get_store()
    shed = get_shedder()
    writer: asyncio.Task | None = None
    last_db = 0.0
    last_seen = time.time()  # a hello writes last_seen itself: the first bulk write is one interval later
    trimmer = Trimmer()  # memory back to the system once most agents left (a restart elsewhere, an outage)
    while True:
        started = loop.time()
        await asyncio.sleep(FLUSH_INTERVAL)
        lag = loop.time() - started - FLUSH_INTERVAL
        if shed.observe(lag, connections=live_telemetry.connections):
            log.warning("telemetry: event loop lag %.2fs, %d connection(s) behind; agents now asked for metrics "
                        "every %gs", lag, shed.last_behind, metrics_interval())
        try:
            now = time.time()
            live_telemetry.finish_stale(now)
            if store.shared:
                await store.push(live_telemetry)
                live_telemetry.drop_released()
            else:
                live_telemetry.dirty.clear()
            trimmer.observe(live_telemetry.connections, loop.time())
            seen_due = live_telemetry.seen and now - last_seen >= settings.FLEET_HEARTBEAT_INTERVAL
            db_due = (live_telemetry.rollups or live_telemetry.alerts) and now - last_db >= DB_INTERVAL
            # hellos with unchanged facts (a reconnect storm) are written every tick: their nodes wait for it
            # to be online, and for their unfinished commands
            arrived_due = _arrivals is not None and _arrivals.pending()
            if (seen_due or db_due or arrived_due) and (writer is None or writer.done()):
                seen: list[int] = []
                rollups: list[dict] = []
                alerts: list[dict] = []
                if seen_due or db_due:
                    last_db = now
                    rollups, alerts = live_telemetry.take()
                if seen_due:
                    last_seen, seen, live_telemetry.seen = now, list(live_telemetry.seen), set()
                arrived = _arrivals.take() if _arrivals is not None else None
                writer = asyncio.create_task(database_sync_to_async(write_db)(rollups, alerts, seen, arrived))
        except Exception:
            log.exception("telemetry flush failed; retrying")

"""Telemetry for browser sockets: topics ``telemetry:fleet`` (the heatmap) and ``telemetry:node:<id>``
(a node page's charts). Pull, not push: one poller per process (per event loop) reads the store on a
short tick for every subscribed socket at once (the change counter once, each node's latest frame and
new points once, the heatmap once) and hands each socket at most one coalesced message per second,
only for what it subscribed to and only when something changed. Nothing on the ingest path fans out
to browsers, and 50 dashboards cost about what one does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fleet import events
from fleet.telemetry.store import get_store

log = logging.getLogger(__name__)

TOPIC = re.compile(r"^telemetry:(fleet|node:(\d{1,12}))$")
TICK = 0.1  # how often the store is checked
# At most one message a second per socket, on average: a token bucket (1/s), never two messages within
# MIN_GAP. The bucket holds a few seconds' worth: an agent's 1 Hz frames arrive at 1 Hz, so tokens are
# spent as fast as they come, and a send held back once (a stall of the event loop, a late flush) would,
# with a bucket of one token and a half, keep every later update of that socket just as late: the
# tokens saved while it was held are what lets the next ones go out on time again.
RATE = 1.0
BUCKET = 3.0
MIN_GAP = 0.5
MAX_NODES = 16


@dataclass
class Pacer:
    """When a socket may send: the token bucket above, driven by whatever clock the caller reads."""

    rate: float = RATE
    bucket: float = BUCKET
    min_gap: float = MIN_GAP
    tokens: float = 1.0
    stamp: float | None = None  # when the tokens were last topped up
    last_sent: float = -math.inf

    def ready(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.bucket, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1 and now - self.last_sent >= self.min_gap

    def spent(self, now: float) -> None:
        self.tokens -= 1
        self.last_sent = now


class TelemetryStream:
    """One socket's telemetry subscriptions and what it has been sent; the process's Poller drives it."""

    def __init__(self, send: Callable[..., Awaitable[None]], clock: Callable[[], float] = time.monotonic) -> None:
        self.send = send
        self.clock = clock
        self.fleet = False
        self.nodes: dict[int, dict[str, Any]] = {}  # node id → {"latest": last JSON sent, "since": point ts}
        self.heat_sent: dict[int, str] = {}
        self.seq_seen = -1  # the store's change counter when this stream last looked
        self.generation = 0  # bumped per subscribe: a tick that read before it must look again
        self.pacer = Pacer()
        self.poller: Poller | None = None

    @staticmethod
    def is_topic(topic: Any) -> bool:
        return isinstance(topic, str) and topic.startswith("telemetry:")

    @property
    def topics(self) -> set[str]:
        return ({"telemetry:fleet"} if self.fleet else set()) | {f"telemetry:node:{n}" for n in self.nodes}

    def change(self, user: Any, action: str, topic: str) -> str | None:
        """Subscribe or unsubscribe; an error message, or None."""
        match = TOPIC.match(topic)
        if not match or events.live_group_for_topic(user, match.group(1)) is None:
            return f"unknown or not permitted: {topic!r}"
        node = int(match.group(2)) if match.group(2) else None
        if action == "subscribe":
            if node is None:
                self.fleet, self.heat_sent = True, {}
            elif node not in self.nodes:
                if len(self.nodes) >= MAX_NODES:
                    return f"at most {MAX_NODES} telemetry node topics per socket"
                self.nodes[node] = {"latest": None, "since": time.time() - 2}  # the page fetched the rest
            self.seq_seen, self.generation = -1, self.generation + 1
        elif node is None:
            self.fleet = False
        else:
            self.nodes.pop(node, None)
        if self.fleet or self.nodes:
            self.poller = self.poller or poller()
            self.poller.add(self)  # (again: restarts a poller whose task ended)
        else:
            self.stop()
        return None

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.discard(self)
            self.poller = None

    async def collect(self) -> str | None:
        """The next coalesced message (a JSON string), or None when nothing changed (no pacing)."""
        return (await collect([self])).get(self)

    def message(self, latest: dict[int, str], points: dict[int, tuple[float, str, list]],
                heat: dict[int, str] | None) -> str | None:
        """This stream's part of one tick's reads (``points``: node → (since it was read from, JSON,
        decoded)); None when nothing in them is new to it."""
        parts: list[str] = []
        entries = []
        for node_id, state in self.nodes.items():
            current = latest.get(node_id)
            if current is None or current == state["latest"] or node_id not in points:
                continue
            read_since, raw, decoded = points[node_id]
            if read_since != state["since"]:  # read for a stream further behind: keep only what is new here
                decoded = [p for p in decoded if p[0] > state["since"]]
                raw = json.dumps(decoded, separators=(",", ":"))
            if decoded:
                state["since"] = decoded[-1][0]
            state["latest"] = current
            entries.append(f'"{node_id}":{{"latest":{current},"points":{raw}}}')
        if entries:
            parts.append('"nodes":{' + ",".join(entries) + "}")
        if self.fleet and heat is not None:
            changed = {nid: cells for nid, cells in heat.items() if self.heat_sent.get(nid) != cells}
            if changed:
                self.heat_sent.update(changed)
                parts.append('"heat":{' + ",".join(f'"{nid}":{cells}' for nid, cells in changed.items()) + "}")
        if not parts:
            return None
        return '{"kind":"telemetry","sent":' + f"{time.time():.3f}," + ",".join(parts) + "}"


async def collect(streams: list[TelemetryStream]) -> dict[TelemetryStream, str]:
    """One tick's reads for these streams and each one's message (those with nothing new are left out).

    The store's change counter first: a stream that has looked since it last moved reads nothing.
    Then one ``latest`` read for every node any of them follows, one read for the points of every node
    that moved (each from the oldest point any of them still needs), one heatmap read."""
    store = get_store()
    seq = await store.seq()  # before the data: what is read next is at least this new
    due = [stream for stream in streams if stream.seq_seen != seq]
    if not due:
        return {}
    generations = {stream: stream.generation for stream in due}
    node_ids = sorted({node_id for stream in due for node_id in stream.nodes})
    latest = await store.latest(node_ids) if node_ids else {}
    oldest: dict[int, float] = {}  # node → the oldest `since` of a stream that has not seen its latest
    for stream in due:
        for node_id, state in stream.nodes.items():
            current = latest.get(node_id)
            if current is not None and current != state["latest"]:
                oldest[node_id] = min(oldest.get(node_id, math.inf), state["since"])
    points = {node_id: (oldest[node_id], raw, json.loads(raw))
              for node_id, raw in (await store.points_many(oldest) if oldest else {}).items()}
    heat = await store.heat() if any(stream.fleet for stream in due) else None
    messages = {}
    for stream in due:
        message = stream.message(latest, points, heat)
        if stream.generation == generations[stream]:  # else it subscribed during the reads: look again
            stream.seq_seen = seq
        if message is not None:
            messages[stream] = message
    return messages


class Poller:
    """The process's (one event loop's) telemetry tick: runs while at least one socket subscribes."""

    def __init__(self) -> None:
        self.streams: set[TelemetryStream] = set()
        self.task: asyncio.Task | None = None
        self.failing = False

    def add(self, stream: TelemetryStream) -> None:
        self.streams.add(stream)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, stream: TelemetryStream) -> None:
        self.streams.discard(stream)
        if not self.streams and self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while self.streams:
                await asyncio.sleep(TICK)
                await self.tick()

    async def tick(self) -> None:
        now = {stream: stream.clock() for stream in self.streams}
        ready = [stream for stream, at in now.items() if stream.pacer.ready(at)]
        if not ready:
            return  # every socket sent within the last second: no read at all
        try:
            messages = await collect(ready)
        except Exception:
            if not self.failing:  # once per outage, not ten times a second
                log.exception("telemetry: reading the store failed; retrying every %gs", TICK)
            self.failing = True
            return
        self.failing = False
        sends = []
        for stream, message in messages.items():
            if stream in self.streams:  # not if it disconnected during the reads
                stream.pacer.spent(now[stream])
                sends.append(stream.send(text_data=message))
        for result in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(result, Exception):
                log.debug("telemetry: a browser send failed: %r", result)


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = weakref.WeakKeyDictionary()


def poller() -> Poller:
    """This event loop's poller (Channels runs every consumer of a process on one loop)."""
    loop = asyncio.get_running_loop()
    found = _pollers.get(loop)
    if found is None:
        found = _pollers[loop] = Poller()
    return found

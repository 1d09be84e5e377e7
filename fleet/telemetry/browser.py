"""Telemetry for one browser socket: topics ``telemetry:fleet`` (the heatmap) and ``telemetry:node:<id>``
(a node page's charts). Pull, not push: the socket reads the store on a short tick and sends at most
one coalesced message per second, only for what it subscribed to and only when something changed.
Nothing on the ingest path fans out to browsers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fleet import events
from fleet.telemetry.store import get_store

TOPIC = re.compile(r"^telemetry:(fleet|node:(\d{1,12}))$")
TICK = 0.1  # how often the store is checked
# At most one message a second per socket: a token bucket (1/s) with a little slack so an agent's
# 1 Hz frames arriving 0.95 s then 1.05 s apart do not each wait a whole extra second; never two
# messages within MIN_GAP.
RATE = 1.0
BUCKET = 1.5
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
    def __init__(self, send: Callable[..., Awaitable[None]], clock: Callable[[], float] = time.monotonic) -> None:
        self.send = send
        self.clock = clock
        self.fleet = False
        self.nodes: dict[int, dict[str, Any]] = {}  # node id → {"latest": last JSON sent, "since": point ts}
        self.heat_sent: dict[int, str] = {}
        self.seq_seen = -1
        self.pacer = Pacer()
        self.task: asyncio.Task | None = None

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
                self.fleet, self.heat_sent, self.seq_seen = True, {}, -1
            elif node not in self.nodes:
                if len(self.nodes) >= MAX_NODES:
                    return f"at most {MAX_NODES} telemetry node topics per socket"
                self.nodes[node] = {"latest": None, "since": time.time() - 2}  # the page fetched the rest
        elif node is None:
            self.fleet = False
        else:
            self.nodes.pop(node, None)
        if self.fleet or self.nodes:
            if self.task is None or self.task.done():
                self.task = asyncio.create_task(self._run())
        else:
            self.stop()
        return None

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(TICK)
                now = self.clock()
                if not self.pacer.ready(now):
                    continue
                message = await self.collect()
                if message is not None:
                    self.pacer.spent(now)
                    await self.send(text_data=message)

    async def collect(self) -> str | None:
        """The next coalesced message (a JSON string), or None when nothing changed."""
        store = get_store()
        parts: list[str] = []
        if self.nodes:
            latest = await store.latest(list(self.nodes))
            entries = []
            for node_id, state in list(self.nodes.items()):  # an unsubscribe may land during an await
                current = latest.get(node_id)
                if current is None or current == state["latest"]:
                    continue
                points = await store.points(node_id, state["since"])
                if node_id not in self.nodes:
                    continue
                decoded = json.loads(points)
                if decoded:
                    state["since"] = decoded[-1][0]
                state["latest"] = current
                entries.append(f'"{node_id}":{{"latest":{current},"points":{points}}}')
            if entries:
                parts.append('"nodes":{' + ",".join(entries) + "}")
        if self.fleet:
            seq = await store.seq()
            if seq != self.seq_seen:
                self.seq_seen = seq
                heat = await store.heat()
                changed = {nid: cells for nid, cells in heat.items() if self.heat_sent.get(nid) != cells}
                if changed:
                    self.heat_sent.update(changed)
                    parts.append('"heat":{' + ",".join(f'"{nid}":{cells}' for nid, cells in changed.items()) + "}")
        if not parts:
            return None
        return '{"kind":"telemetry","sent":' + f"{time.time():.3f}," + ",".join(parts) + "}"

"""Where browsers and /metrics read live telemetry: this process's LiveTelemetry (embedded default) or the shared
Redis copy that every server process writes in batches (production, REDIS_URL set).

Redis layout (prefix = FLEET_CHANNEL_PREFIX): ``tel:latest`` and ``tel:heat`` hashes (node id → JSON),
``tel:win:<id>`` lists of window points, ``tel:seq`` (bumped per flush), ``tel:proc:<id>`` counters
per server process (expire when the process stops refreshing them).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from fleet.lib.env import env_str
from fleet.telemetry.live import VALUE_FIELDS, WINDOW_MAX_POINTS, WINDOW_SECONDS, LiveTelemetry, live_telemetry

PROCESS_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
PROC_TTL = 30
GpuValues = tuple[int, str, bool, list[float | None], int | None]  # index, uuid, lost, VALUE_FIELDS, last XID
COUNTER_KEYS = ("frames", "points", "bytes", "dropped", "rejected", "alerts_dropped", "connections")


# Every window a flush appends to: KEYS are the window lists, ARGV the cap, the TTL, each list's number of new
# points, then the points in that order. Lua's unpack takes at most a few thousand values at once: chunks.
APPEND_POINTS = """
local cap, ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), #KEYS
local at = 3 + n
for i = 1, n do
  local count = tonumber(ARGV[2 + i])
  local last = at + count - 1
  for from = at, last, 1000 do
    redis.call('RPUSH', KEYS[i], unpack(ARGV, from, math.min(from + 999, last)))
  end
  redis.call('LTRIM', KEYS[i], -cap, -1)
  redis.call('EXPIRE', KEYS[i], ttl)
  at = last + 1
end
return n
"""


def _point_ts(point: str) -> float:
    return float(point[1:point.index(",")])


def _json_after(points: list[str], since: float) -> str:
    """The window points (JSON each) newer than ``since`` (all of them without) as one JSON array."""
    return "[" + ",".join(p for p in points if not since or _point_ts(p) > since) + "]"


class LocalStore:
    shared = False

    def __init__(self, source: LiveTelemetry = live_telemetry) -> None:
        self.telemetry = source

    async def seq(self) -> int:
        return self.telemetry.seq

    async def latest(self, node_ids: list[int]) -> dict[int, str]:
        return {nid: self.telemetry.nodes[nid].latest_json() for nid in node_ids
                if nid in self.telemetry.nodes and self.telemetry.nodes[nid].latest is not None}

    async def points(self, node_id: int, since: float = 0.0) -> str:
        return self.telemetry.window_json(node_id, since)

    async def points_many(self, wanted: dict[int, float]) -> dict[int, str]:
        return {node_id: await self.points(node_id, since) for node_id, since in wanted.items()}

    async def heat(self) -> dict[int, str]:
        return {nid: json.dumps(live.heat(), separators=(",", ":")) for nid, live in self.telemetry.nodes.items()
                if live.latest is not None}

    def latest_all(self) -> dict[int, dict[str, Any]]:
        return {nid: json.loads(live.latest_json()) for nid, live in self.telemetry.nodes.items()
                if live.latest is not None}

    def gpu_values(self) -> Iterator[tuple[int, float, list[GpuValues]]]:
        """(node id, frame time, per GPU (index, uuid, lost, VALUE_FIELDS values, last XID)) of every node with
        a frame, in node id order: what /metrics writes, read from the compact values (no JSON parsed).
        One node at a time: what the caller is done with dies young (see RedisStore.gpu_values)."""
        nodes = self.telemetry.nodes
        for nid in sorted(nodes):
            live = nodes.get(nid)
            if live is not None and live.latest is not None:
                xids = live.last_xid
                yield nid, live.ts, [(index, uuid, lost, values, xids.get(uuid))
                                     for index, uuid, lost, values in live.gpu_values()]

    def latest_of(self, node_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The latest frames of these nodes only (sync: the node list reads one page's worth)."""
        nodes = self.telemetry.nodes
        return {nid: json.loads(nodes[nid].latest_json()) for nid in node_ids
                if nid in nodes and nodes[nid].latest is not None}

    def snapshot(self, node_id: int) -> tuple[str | None, str]:
        """(latest JSON or None, window JSON) of one node, for a page's first paint."""
        live = self.telemetry.nodes.get(node_id)
        if live is None or live.latest is None:
            return None, "[]"
        return live.latest_json(), self.telemetry.window_json(node_id)

    def heat_all(self) -> dict[int, str]:
        return {nid: json.dumps(live.heat(), separators=(",", ":")) for nid, live in self.telemetry.nodes.items()
                if live.latest is not None}

    def counters(self) -> dict[str, float]:
        return {**self.telemetry.counters, "connections": self.telemetry.connections}


class RedisStore:
    shared = True

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = f"{prefix}:tel"
        self._async: Any = None
        self._sync: Any = None
        self._append: Any = None

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    @property
    def aio(self):
        import redis.asyncio

        if self._async is None:
            self._async = redis.asyncio.Redis.from_url(self.url, decode_responses=True)
        return self._async

    @property
    def sync(self):
        import redis

        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)
        return self._sync

    # ---- writer (the flusher of the process that holds the agent connections) ----------------------

    async def push(self, source: LiveTelemetry) -> None:
        """Copy the nodes changed since the last push: one script call and one pipeline per flush, whatever
        the number of nodes (a command per node cost a reply each, parsed under a timeout of its own: at
        1,000 agents that was a sixth of the server's CPU)."""
        source.shared = True
        dirty, source.dirty = source.dirty, set()
        latest, heat = {}, {}
        windows: list[str] = []
        counts: list[int] = []
        points: list[str] = []
        for nid in dirty:
            live = source.nodes.get(nid)
            if live is None or live.latest is None:
                continue
            latest[nid] = live.latest_json()
            heat[nid] = json.dumps(live.heat(), separators=(",", ":"))
            if live.unflushed:
                windows.append(self.key("win", nid))
                counts.append(len(live.unflushed))
                points.extend(live.unflushed)
                live.unflushed.clear()
        pipe = self.aio.pipeline(transaction=False)
        if windows:  # a registered script: the pipeline loads it first where Redis lacks it (a restart)
            await self.append_points(keys=windows, args=[WINDOW_MAX_POINTS, WINDOW_SECONDS, *counts, *points],
                                     client=pipe)
        if latest:
            pipe.hset(self.key("latest"), mapping=latest)
            pipe.hset(self.key("heat"), mapping=heat)
            pipe.incr(self.key("seq"))
        counters = {**source.counters, "connections": source.connections}
        pipe.hset(self.key("proc", PROCESS_ID), mapping=counters)
        pipe.expire(self.key("proc", PROCESS_ID), PROC_TTL)
        pipe.sadd(self.key("procs"), PROCESS_ID)
        await pipe.execute()

    @property
    def append_points(self):
        if self._append is None:
            self._append = self.aio.register_script(APPEND_POINTS)
        return self._append

    # ---- readers (any process) ---------------------------------------------------------------------

    async def seq(self) -> int:
        return int(await self.aio.get(self.key("seq")) or 0)

    async def latest(self, node_ids: list[int]) -> dict[int, str]:
        if not node_ids:
            return {}
        values = await self.aio.hmget(self.key("latest"), node_ids)
        return {nid: value for nid, value in zip(node_ids, values, strict=True) if value}

    async def points(self, node_id: int, since: float = 0.0) -> str:
        """The window's points newer than ``since`` (all of them without): read from the tail in growing
        chunks until one at or before ``since`` shows up, so a burst (a catch-up batch, a slow poller)
        is never cut to the last few points."""
        key = self.key("win", node_id)
        if not since:
            points = await self.aio.lrange(key, 0, -1)
        else:
            count = 16
            while True:
                points = await self.aio.lrange(key, -count, -1)
                if len(points) < count or (points and _point_ts(points[0]) <= since):
                    break
                count *= 4
        return _json_after(points, since)

    async def points_many(self, wanted: dict[int, float]) -> dict[int, str]:
        """``points`` for many nodes (node → since) in one round trip: a poller's reads wait a turn of a busy
        event loop each, so one read per node made a dashboard's update wait for as many turns. A node with
        more new points than the first read's tail is read again on its own."""
        pipe = self.aio.pipeline(transaction=False)
        for node_id, since in wanted.items():
            pipe.lrange(self.key("win", node_id), -16 if since else 0, -1)
        found: dict[int, str] = {}
        for (node_id, since), points in zip(wanted.items(), await pipe.execute(), strict=True):
            if since and len(points) == 16 and _point_ts(points[0]) > since:
                found[node_id] = await self.points(node_id, since)  # a burst: the growing reads
            else:
                found[node_id] = _json_after(points, since)
        return found

    async def heat(self) -> dict[int, str]:
        return {int(k): v for k, v in (await self.aio.hgetall(self.key("heat"))).items()}

    def latest_all(self) -> dict[int, dict[str, Any]]:
        return {int(k): json.loads(v) for k, v in self.sync.hgetall(self.key("latest")).items()}

    def gpu_values(self) -> Iterator[tuple[int, float, list[GpuValues]]]:
        """As LocalStore.gpu_values, each frame parsed as it is reached: thousands of parsed frames held at
        once survived into the oldest GC generation and set off a full collection of a busy server (a
        third of a second at 2,000 agents) on every scrape."""
        frames = self.sync.hgetall(self.key("latest"))
        for key in sorted(frames, key=int):
            frame = json.loads(frames[key])
            yield int(key), frame.get("ts"), [(gpu["index"], gpu["uuid"], gpu.get("lost", False),
                                               [gpu.get(name) for name in VALUE_FIELDS], gpu.get("last_xid"))
                                              for gpu in frame.get("gpus", [])]

    def latest_of(self, node_ids: list[int]) -> dict[int, dict[str, Any]]:
        if not node_ids:
            return {}
        values = self.sync.hmget(self.key("latest"), node_ids)
        return {nid: json.loads(value) for nid, value in zip(node_ids, values, strict=True) if value}

    def snapshot(self, node_id: int) -> tuple[str | None, str]:
        pipe = self.sync.pipeline(transaction=False)
        pipe.hget(self.key("latest"), node_id)
        pipe.lrange(self.key("win", node_id), 0, -1)
        latest, points = pipe.execute()
        return latest, "[" + ",".join(points) + "]"

    def heat_all(self) -> dict[int, str]:
        return {int(k): v for k, v in self.sync.hgetall(self.key("heat")).items()}

    def counters(self) -> dict[str, float]:
        totals = dict.fromkeys(COUNTER_KEYS, 0.0)
        for proc in self.sync.smembers(self.key("procs")):
            values = self.sync.hgetall(self.key("proc", proc))
            if not values:
                self.sync.srem(self.key("procs"), proc)  # that process stopped
                continue
            for name in COUNTER_KEYS:
                totals[name] += float(values.get(name, 0))
        return totals


_store: LocalStore | RedisStore | None = None


def get_store() -> LocalStore | RedisStore:
    global _store
    if _store is None:
        url = env_str("REDIS_URL")
        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
        if url and "Redis" in backend:
            _store = RedisStore(url, settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "fleet"))
            live_telemetry.shared = True
        else:
            _store = LocalStore()
    return _store

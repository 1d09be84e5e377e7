"""The in-process live state of the nodes whose agents are connected to this server process.

``ingest`` runs on the event loop for every metrics frame: no ORM, no thread hop, no channel-layer
send; it only updates memory (latest frame, 15-minute window, the running minute per GPU) and notes
alerts. The flusher (fleet/telemetry/flusher.py) turns that into rollup rows, alert rows and, in
production, the shared Redis copy on a timer.
"""

from __future__ import annotations

import json
import math
import operator
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fleet.agent.protocol import GpuSample, Metrics, MetricsBatch
from fleet.telemetry.minutes import GpuMinute, minute_of
from fleet.telemetry.window import WINDOW_SECONDS, Row, Window, points_json

WINDOW_MAX_POINTS = 1800  # Redis's copy of a window: an agent on a 0.5 s interval fills 15 min
MIB = 1024 * 1024
# XIDs caused by applications (illegal address, page faults in user code, ...), not by the hardware.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120})
XID_REPEAT_SECONDS = 60.0  # the same XID on the same GPU within this counts into one alert
MAX_PENDING_ALERTS = 1000
TEMP_CLEAR_MARGIN = 5.0


# Per GPU of the latest frame, in this order (None as NaN): what heat() and /metrics read without parsing JSON.
VALUE_FIELDS = ("utilization_gpu", "utilization_memory", "memory_used_bytes", "memory_total_bytes", "temperature_c",
                "power_w", "sm_clock_mhz", "mem_clock_mhz", "fan_percent", "energy_j", "ecc_corrected",
                "ecc_uncorrected")
NV = len(VALUE_FIELDS)
_get_values = operator.attrgetter(*VALUE_FIELDS)
UTIL, _, USED, TOTAL, TEMP, POWER = range(6)
# Points waiting for RedisStore.push (every 0.5 s; only kept when this process feeds Redis): a catch-up batch
# (at most 600 points) fits; beyond, the oldest are dropped and counted.
UNFLUSHED_MAX = 900


def _value(value: float | None) -> float | None:
    return None if value != value else value


@dataclass
class NodeLive:
    node_id: int
    seq: int = 0
    ts: float = 0.0  # server time of the latest frame
    # The latest frame as JSON without its closing brace (``ts``, ``seq``, ``node`` are appended on read):
    # 3 KB where the parsed frame held 12 KB. None until the first frame.
    frame: str | None = None
    agent_ts: str = ""
    gpus: tuple = ()  # (index, uuid, lost) per GPU of the latest frame
    values: array = field(default_factory=lambda: array("d"))  # VALUE_FIELDS per GPU of the latest frame
    # None once the node's last connection closed (history: the DB rollups), and always None in a process
    # that feeds Redis: there the window lives in Redis alone (browsers read it there), and the process keeps
    # only the newest point's time (``newest``) for catch-up batches and the points not yet pushed.
    window: Window | None = None
    newest: float = 0.0
    last_point: str | None = None  # the released window's newest point (JSON): where an offline node's line ends
    unflushed: deque = field(default_factory=deque)  # point JSON not yet copied to Redis
    connections: int = 0  # agent connections of this node open in this process
    minutes: dict[str, GpuMinute] = field(default_factory=dict)  # by GPU uuid
    energy_last: dict[str, float] = field(default_factory=dict)  # last reading of the finished minute
    lost: set[str] = field(default_factory=set)
    hot: set[str] = field(default_factory=set)
    ecc: dict[str, int] = field(default_factory=dict)
    xid_seen: dict[tuple[str, int], float] = field(default_factory=dict)
    last_xid: dict[str, int] = field(default_factory=dict)  # DCGM_FI_DEV_XID_ERRORS: the last XID per GPU

    @property
    def latest(self) -> str | None:
        """Not None once the node has sent a frame."""
        return self.frame

    def latest_json(self) -> str:
        """The latest frame as the browser and /metrics see it."""
        if self.frame is None:
            return ""
        return f'{self.frame},"agent_ts":{self.agent_ts},"ts":{float(self.ts)!r},"seq":{self.seq},' \
               f'"node":{self.node_id}}}'

    def keep_frame(self, frame: Metrics) -> None:
        gpus = frame.gpus
        if any(gpu.uuid in self.last_xid for gpu in gpus):
            body = frame.model_dump(exclude_none=True, exclude={"type", "v", "ts"})
            for gpu in body["gpus"]:
                if gpu["uuid"] in self.last_xid:
                    gpu["last_xid"] = self.last_xid[gpu["uuid"]]
            text = json.dumps(body, separators=(",", ":"))
        else:  # pydantic-core's serializer: a quarter of model_dump + json.dumps
            text = frame.model_dump_json(exclude_none=True, exclude={"type", "v", "ts"})
        self.frame, self.agent_ts = text[:-1], repr(float(frame.ts))
        ids = tuple((gpu.index, gpu.uuid, gpu.lost) for gpu in gpus)
        if ids != self.gpus:
            self.gpus = ids
        self.values = array("d", [math.nan if v is None else v for gpu in gpus for v in _get_values(gpu)])

    def gpu_values(self) -> Iterator[tuple[int, str, bool, list[float | None]]]:
        """(index, uuid, lost, VALUE_FIELDS values) per GPU of the latest frame."""
        values = self.values
        for k, (index, uuid, lost) in enumerate(self.gpus):
            yield index, uuid, lost, [_value(v) for v in values[NV * k:NV * (k + 1)]]

    def heat(self) -> list[list[Any]]:
        """Per GPU [index, util %, memory %, temperature °C, lost, power W, memory used MiB, memory total MiB]
        for the fleet heatmap and GPU table (None when unknown)."""
        cells = []
        for index, _, lost, values in self.gpu_values():
            used, total = values[USED], values[TOTAL]
            mem = round(100 * used / total, 1) if used is not None and total else None
            cells.append([index, None if lost else values[UTIL], mem, values[TEMP], 1 if lost else 0,
                          values[POWER], None if used is None else int(used) // MIB,
                          None if total is None else int(total) // MIB])
        return cells


def point_json(ts: float, gpus: list[GpuSample]) -> str:
    """One window point as browsers read it: [ts, [[index, util, memory MiB, temperature, power, SM MHz], ...]]."""
    return json.dumps([ts, [_row(g) for g in gpus]], separators=(",", ":"))


def _row(g: GpuSample) -> Row:
    return (g.index, g.utilization_gpu, None if g.memory_used_bytes is None else g.memory_used_bytes // MIB,
            g.temperature_c, g.power_w, g.sm_clock_mhz)


class LiveTelemetry:
    """All live telemetry of this process. One instance per process (``live_telemetry``)."""

    def __init__(self) -> None:
        self.shared = False  # this process feeds Redis (RedisStore.push): keep unflushed points for it
        self.reset()

    def reset(self) -> None:
        """Forget everything: the state of a process that has heard from no agent yet."""
        self.nodes: dict[int, NodeLive] = {}
        self.dirty: set[int] = set()
        self.seen: set[int] = set()  # nodes heard from since last_seen was last written (one UPDATE for all)
        self.released: set[int] = set()  # shared mode: nodes whose last connection closed, dropped after a push
        self.rollups: list[dict[str, Any]] = []  # finished minutes waiting for bulk_create
        self.alerts: list[dict[str, Any]] = []  # derived alerts waiting for the DB writer
        self.seq = 0  # bumps on every accepted frame: "something changed" for fleet-wide readers
        self.temp_threshold = 85.0
        self.connections = 0
        self._stale_due = 0.0
        self.counters = {"frames": 0, "points": 0, "bytes": 0, "dropped": 0, "rejected": 0, "alerts_dropped": 0,
                         "agent_dropped": 0, "unflushed_dropped": 0}

    def node(self, node_id: int) -> NodeLive:
        live = self.nodes.get(node_id)
        if live is None:
            live = self.nodes[node_id] = NodeLive(node_id)
        return live

    def attach(self, node_id: int) -> None:
        """An agent connection of this node opened (a replacement may open before the old one closes)."""
        self.node(node_id).connections += 1
        self.connections += 1

    def detach(self, node_id: int) -> None:
        """An agent connection closed; with the node's last one, its window and running minutes go (the
        minutes into rollups). The latest frame stays: an offline node's page shows when it was last heard."""
        self.connections -= 1
        live = self.nodes.get(node_id)
        if live is None:
            return
        live.connections = max(0, live.connections - 1)
        if not live.connections:
            for acc in list(live.minutes.values()):
                self._finish(live, acc)
            if self.shared:  # Redis holds its latest frame and window: nothing to keep once they are pushed
                self.released.add(node_id)
                return
            newest = next(live.window.newest_first(), None) if live.window else None
            if newest is not None:
                live.last_point = points_json(newest)
            live.window = None

    # ---- ingest (event loop, per frame) -------------------------------------------------------------

    def ingest(self, node_id: int, frame: Metrics, size: int = 0, now: float | None = None) -> None:
        now = time.time() if now is None else now
        live = self.node(node_id)
        self._fold(live, now, frame.gpus)
        live.keep_frame(frame)
        live.ts = now
        live.seq += 1
        self.seq += 1
        self.dirty.add(node_id)
        self.seen.add(node_id)
        self.counters["frames"] += 1
        self.counters["bytes"] += size

    def ingest_batch(self, node_id: int, batch: MetricsBatch, size: int = 0, now: float | None = None) -> None:
        """A catch-up after a reconnect: agent times are mapped onto the server clock (``sent`` ↔ now);
        points older than the window or not after what we already hold are skipped."""
        now = time.time() if now is None else now
        live = self.node(node_id)
        skew = now - batch.sent
        newest = live.newest  # every point folded in moved it, the window's included
        for point in sorted(batch.points, key=lambda p: p.ts):
            ts = point.ts + skew
            if ts <= newest or ts < now - WINDOW_SECONDS or ts > now:
                continue
            self._fold(live, ts, point.gpus)
            newest = ts
            self.counters["points"] += 1
        live.seq += 1
        self.seq += 1
        self.dirty.add(node_id)
        self.seen.add(node_id)
        self.counters["bytes"] += size
        self.counters["agent_dropped"] += batch.dropped  # lost to the agent's bounded buffer while offline

    def _fold(self, live: NodeLive, ts: float, gpus: list[GpuSample]) -> None:
        ts = round(ts, 3)  # the precision points carry: readers filter on the value they saw
        live.newest = max(live.newest, ts)
        if self.shared:  # the window is Redis's (RedisStore.push): ~50 KB per 8-GPU node not kept twice
            if len(live.unflushed) >= UNFLUSHED_MAX:
                live.unflushed.popleft()
                self.counters["unflushed_dropped"] += 1
            live.unflushed.append(point_json(ts, gpus))
        else:
            if live.window is None:
                live.window = Window()
                if live.last_point is not None:  # reconnected: the line resumes after a visible gap
                    last_ts, rows = json.loads(live.last_point)
                    if ts - WINDOW_SECONDS <= last_ts < ts:
                        live.window.append(last_ts, rows)
                    live.last_point = None
            live.window.append(ts, [_row(g) for g in gpus])
        minute = minute_of(ts)
        for gpu in gpus:
            self._alerts_for(live, ts, gpu)
            if gpu.lost:
                continue
            acc = live.minutes.get(gpu.uuid)
            if acc is not None and acc.minute != minute:
                if minute < acc.minute:
                    continue  # a late sample of a finished minute: the rollup is already on its way
                self._finish(live, acc)
                acc = None
            if acc is None:
                acc = live.minutes[gpu.uuid] = GpuMinute(minute, gpu.index, gpu.uuid)
            acc.add(gpu)

    def _finish(self, live: NodeLive, acc: GpuMinute) -> None:
        self.rollups.append(acc.row(live.node_id, live.energy_last.get(acc.uuid)))
        if acc.energy_last is not None:
            live.energy_last[acc.uuid] = acc.energy_last
        live.minutes.pop(acc.uuid, None)

    def finish_stale(self, now: float, grace: float = 5.0) -> None:
        """Close minutes that ended ``grace`` seconds ago (the agent stopped sending, or went quiet)."""
        if now < self._stale_due:
            return  # nothing can have gone stale since the last scan
        self._stale_due = minute_of(now) + 60 + grace
        cutoff = minute_of(now - grace)
        for live in self.nodes.values():
            for acc in [acc for acc in live.minutes.values() if acc.minute < cutoff]:
                self._finish(live, acc)

    # ---- alerts ------------------------------------------------------------------------------------

    def _alert(self, live: NodeLive, gpu: GpuSample, kind: str, severity: str, message: str,
               code: int | None = None, resolve: bool = False) -> None:
        if len(self.alerts) >= MAX_PENDING_ALERTS:
            self.counters["alerts_dropped"] += 1
            return
        self.alerts.append({"node_id": live.node_id, "kind": kind, "severity": severity, "gpu_index": gpu.index,
                            "gpu_uuid": gpu.uuid, "code": code, "message": message[:300], "resolve": resolve})

    def _alerts_for(self, live: NodeLive, ts: float, gpu: GpuSample) -> None:
        uuid = gpu.uuid
        if gpu.lost != (uuid in live.lost):
            if gpu.lost:
                live.lost.add(uuid)
                message = f"GPU {gpu.index} ({uuid}) is lost: NVML cannot reach it"
                self._alert(live, gpu, "gpu_lost", "critical", message)
            else:
                live.lost.discard(uuid)
                self._alert(live, gpu, "gpu_lost", "critical", "", resolve=True)
        for xid in gpu.xids:
            live.last_xid[uuid] = xid
            if xid in APPLICATION_XIDS:
                continue
            last = live.xid_seen.get((uuid, xid))
            live.xid_seen[(uuid, xid)] = ts
            if last is not None and ts - last < XID_REPEAT_SECONDS:
                continue
            severity = "critical" if xid in CRITICAL_XIDS else "warning"
            self._alert(live, gpu, "xid", severity, f"GPU {gpu.index} reported XID {xid}", code=xid)
        if gpu.ecc_uncorrected is not None:
            before = live.ecc.get(uuid, 0)
            if gpu.ecc_uncorrected > before:
                self._alert(live, gpu, "ecc_uncorrected", "critical",
                            f"GPU {gpu.index}: {gpu.ecc_uncorrected} uncorrected ECC error(s) (volatile)")
            live.ecc[uuid] = gpu.ecc_uncorrected
        temp = gpu.temperature_c
        if temp is not None:
            if temp >= self.temp_threshold and uuid not in live.hot:
                live.hot.add(uuid)
                self._alert(live, gpu, "overheat", "warning",
                            f"GPU {gpu.index} at {temp:g} °C (threshold {self.temp_threshold:g} °C)")
            elif temp < self.temp_threshold - TEMP_CLEAR_MARGIN and uuid in live.hot:
                live.hot.discard(uuid)
                self._alert(live, gpu, "overheat", "warning", "", resolve=True)

    # ---- reads -------------------------------------------------------------------------------------

    def window_json(self, node_id: int, since: float = 0.0) -> str:
        live = self.nodes.get(node_id)
        if live is None:
            return "[]"
        if live.window is None:
            last = live.last_point
            return f"[{last}]" if last and float(last[1:last.index(",")]) > since else "[]"
        return points_json(live.window.since(since) if since else live.window)

    def take(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rollups, alerts = self.rollups, self.alerts
        self.rollups, self.alerts = [], []
        return rollups, alerts

    def drop_released(self) -> int:
        """Shared mode, after a push: forget the nodes whose last connection closed (their latest frame and
        points are in Redis); kept, every node that ever connected stayed in the process for good (its
        latest frame, ~3 KB, and alert state). Alert state goes with them, as when the agent reconnects to
        another process: the alert writer dedupes open conditions and recent events."""
        dropped, waiting = 0, set()
        for node_id in self.released:
            live = self.nodes.get(node_id)
            if live is None or live.connections:
                continue  # forgotten (deleted), or its agent came back
            if live.unflushed:
                waiting.add(node_id)  # points not pushed yet: the next push copies them
                continue
            del self.nodes[node_id]
            dropped += 1
        self.released = waiting
        return dropped

    def forget(self, node_id: int) -> None:
        """Drop a node's state (deleted node). Finished minutes are kept for the writer."""
        live = self.nodes.pop(node_id, None)
        if live is not None:
            for acc in list(live.minutes.values()):
                self._finish(live, acc)


live_telemetry = LiveTelemetry()

"""A node's 15-minute chart window in fixed-size numeric arrays: no Python object per point.

Budget (issue 11: ≤ 100 KB of server memory per connected 8-GPU agent, the window ≤ ~60 KB of it). Full
resolution for 15 minutes does not fit: 8 GPUs × 5 fields × 1,800 points × 4 bytes = 288 KB. So two tiers:

* ``recent``: the last RECENT_POINTS points as sent (2 minutes at the default 1 s interval): what a chart's
  right edge and every ``since`` poll read;
* ``old``: older points averaged into BUCKET_SECONDS buckets for the rest of the 15 minutes (a full recent
  ring retires its oldest whole 5 s slice at once). A 15-minute chart is a few hundred pixels wide, so 5 s
  is about one pixel: the averages draw the same line, and with BUCKET_SECONDS at a third of
  FLEET_OFFLINE_AFTER's default (15 s) the browser's gap rule (a break after max(offline_after, 3 × step))
  never breaks a line between buckets. Spikes shorter than
  a bucket are flattened there; the per-minute rollups keep min and max for history.

A GPU field costs 4 bytes: utilization, temperature and power as float32 (None as NaN; read back as the
shortest decimal that maps to the same float32, so 61.5 stays 61.5), memory MiB and SM clock as int32
(None as -1; memory -2 marks a GPU absent from that point). 8 GPUs × 20 bytes × (120 + 180) points + the
timestamps ≈ 50 KB once full, allocated once per connection.
"""

from __future__ import annotations

import json
import math
import struct
from array import array
from collections.abc import Iterator
from typing import Any

WINDOW_SECONDS = 15 * 60
RECENT_POINTS = 120
BUCKET_SECONDS = 5.0
OLD_POINTS = int(WINDOW_SECONDS // BUCKET_SECONDS)
MAX_SLOTS = 256  # GPUs a window tracks (a frame carries at most 256); more distinct indexes start afresh
NONE_INT = -1
ABSENT = -2
INT_MAX = 2**31 - 1
NAN = math.nan
FLOATS, INTS = 3, 2  # per GPU and point: (util, °C, W) and (MiB, MHz)
_F32 = struct.Struct("f")

Row = tuple[int, float | None, int | None, float | None, float | None, int | None]  # index, util, MiB, °C, W, MHz


def _float_out(value: float) -> float | None:
    """A float32 read back as the shortest decimal that maps to the same float32 (None for NaN)."""
    if value != value:
        return None
    if value.is_integer():
        return value
    for digits in (6, 7, 8):
        short = float(f"{value:.{digits}g}")
        if _F32.unpack(_F32.pack(short))[0] == value:
            return short
    return float(f"{value:.9g}")


class Ring:
    """Points in a circular buffer: timestamps plus, per GPU slot, FLOATS float32 and INTS int32 columns."""

    __slots__ = ("cap", "ts", "f", "i", "head", "size")

    def __init__(self, cap: int, slots: int) -> None:
        self.cap, self.head, self.size = cap, 0, 0
        self.ts = array("d", bytes(8 * cap))
        self.f: list[array] = []
        self.i: list[array] = []
        for _ in range(slots):
            self.add_slot()

    def add_slot(self) -> None:
        self.f.append(array("f", [NAN]) * (FLOATS * self.cap))
        self.i.append(array("i", [ABSENT]) * (INTS * self.cap))

    def pos(self, k: int) -> int:
        """Position of the k-th stored point, oldest first (negative k: from the newest)."""
        return (self.head - self.size + (k % self.size)) % self.cap

    def push(self, ts: float) -> int:
        """Make room for a point at the newest end (the caller saved the oldest if full); returns its position,
        every GPU slot marked absent."""
        at = self.head
        self.head = (at + 1) % self.cap
        self.size = min(self.size + 1, self.cap)
        self.ts[at] = ts
        for ints in self.i:
            ints[INTS * at] = ABSENT
        return at

    def popleft(self) -> None:
        self.size -= 1

    def row(self, slot: int, at: int, index: int) -> list | None:
        ints = self.i[slot]
        mib = ints[INTS * at]
        if mib == ABSENT:
            return None
        floats, k = self.f[slot], FLOATS * at
        mhz = ints[INTS * at + 1]
        return [index, _float_out(floats[k]), None if mib == NONE_INT else mib, _float_out(floats[k + 1]),
                _float_out(floats[k + 2]), None if mhz == NONE_INT else mhz]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Window:
    """One node's chart points, oldest to newest: ``old`` (bucket averages), then ``recent``."""

    __slots__ = ("slots", "order", "recent", "old")

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}  # GPU index → column
        self.order: list[tuple[int, int]] = []  # (index, slot) by index: the output order
        self.recent = Ring(RECENT_POINTS, 0)
        self.old = Ring(OLD_POINTS, 0)

    def __len__(self) -> int:
        return self.old.size + self.recent.size

    def newest(self) -> float | None:
        return self.recent.ts[self.recent.pos(-1)] if self.recent.size else None

    def _slot(self, index: int) -> int | None:
        slot = self.slots.get(index)
        if slot is None:
            if len(self.slots) >= MAX_SLOTS:
                return None
            slot = self.slots[index] = len(self.slots)
            self.recent.add_slot()
            self.old.add_slot()
            self.order = sorted(self.slots.items())
        return slot

    def append(self, ts: float, rows: list[Row]) -> None:
        """Add a point; rows are (index, util, MiB, °C, W, MHz) per GPU, None where unknown."""
        if len(self.slots) + len(rows) > MAX_SLOTS and any(row[0] not in self.slots for row in rows):
            self.__init__()  # GPU indexes keep changing (no real node does): start afresh rather than grow
        recent = self.recent
        if recent.size == recent.cap:
            self._retire()
        at = recent.push(ts)
        slots, fat, iat = self.slots, FLOATS * at, INTS * at
        for index, util, mib, temp, power, mhz in rows:
            slot = slots.get(index)
            if slot is None and (slot := self._slot(index)) is None:
                continue
            floats, ints = recent.f[slot], recent.i[slot]
            floats[fat] = NAN if util is None else util
            floats[fat + 1] = NAN if temp is None else temp
            floats[fat + 2] = NAN if power is None else power
            ints[iat] = NONE_INT if mib is None else min(mib, INT_MAX)
            ints[iat + 1] = NONE_INT if mhz is None else mhz
        self._expire(ts - WINDOW_SECONDS)

    def _retire(self) -> None:
        """The oldest BUCKET_SECONDS slice of ``recent`` leaves full resolution: its points become one point of
        ``old``, their averages (per GPU and field, over the samples that had a value)."""
        recent, old = self.recent, self.old
        key = recent.ts[recent.pos(0)] // BUCKET_SECONDS
        group = []
        while recent.size and recent.ts[at := recent.pos(0)] // BUCKET_SECONDS == key:
            group.append(at)
            recent.popleft()
        if old.size == old.cap:
            old.popleft()
        dest = old.push(round(sum(recent.ts[at] for at in group) / len(group), 3))
        for slot, (floats, ints) in enumerate(zip(recent.f, recent.i, strict=True)):
            present = [at for at in group if ints[INTS * at] != ABSENT]
            if not present:
                continue
            out_f, out_i = old.f[slot], old.i[slot]
            for k in range(FLOATS):
                mean = _mean([v for at in present if (v := floats[FLOATS * at + k]) == v])
                out_f[FLOATS * dest + k] = NAN if mean is None else mean
            for k in range(INTS):
                mean = _mean([v for at in present if (v := ints[INTS * at + k]) != NONE_INT])
                out_i[INTS * dest + k] = NONE_INT if mean is None else round(mean)

    def _expire(self, cutoff: float) -> None:
        for ring in (self.old, self.recent):
            while ring.size and ring.ts[ring.pos(0)] < cutoff:
                ring.popleft()

    # ---- reads -------------------------------------------------------------------------------------

    def _point(self, ring: Ring, at: int) -> list:
        rows = [ring.row(slot, at, index) for index, slot in self.order]
        return [ring.ts[at], [row for row in rows if row is not None]]

    def newest_first(self) -> Iterator[list]:
        """Points as [ts, [[index, util, MiB, °C, W, MHz], ...]], newest first."""
        for ring in (self.recent, self.old):
            for k in range(ring.size - 1, -1, -1):
                yield self._point(ring, ring.pos(k))

    def __iter__(self) -> Iterator[list]:
        return reversed(list(self.newest_first()))

    def since(self, since: float) -> list[list]:
        """Points newer than ``since``, oldest first: O(new points) for a poller that keeps up."""
        recent: list[list] = []
        for point in self.newest_first():
            if point[0] <= since:
                break
            recent.append(point)
        recent.reverse()
        return recent


def points_json(points: Any) -> str:
    """Window points as the JSON array browsers read: [[ts, [[index, util, MiB, °C, W, MHz], ...]], ...]."""
    return json.dumps(list(points), separators=(",", ":"))

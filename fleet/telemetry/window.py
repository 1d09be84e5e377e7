"""A node's 15-minute chart window in fixed-size numeric arrays: no Python object per point.

Budget (issue 11: ≤ 100 KB of server memory per connected 8-GPU agent, the window ≤ ~60 KB of it). Full
resolution for 15 minutes does not fit: 8 GPUs × 5 fields × 1,800 points × 4 bytes = 288 KB. So two tiers:

* ``recent``: the last RECENT_POINTS points as sent (2 minutes at the default 1 s interval): what a chart's
  right edge and every ``since`` poll read;
* ``old``: older points averaged into BUCKET_SECONDS buckets for the rest of the 15 minutes. A 15-minute
  chart is a few hundred pixels wide, so 5 s is about one pixel: the averages draw the same line, and
  BUCKET_SECONDS stays under a third of FLEET_OFFLINE_AFTER's default (15 s), so the browser's gap rule
  (a break after max(offline_after, 3 × step)) never breaks a line between buckets. Spikes shorter than
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


def _num(value: float | None) -> float:
    return NAN if value is None else value


def _int(value: int | None) -> int:
    return NONE_INT if value is None else min(int(value), INT_MAX)


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


class Bucket:
    """Sums of the recent points that fell out of ``recent`` within one BUCKET_SECONDS slice."""

    __slots__ = ("key", "n", "ts", "sums", "counts", "present")

    def __init__(self, slots: int) -> None:
        self.key, self.n, self.ts = None, 0, 0.0
        self.sums = array("d", bytes(8 * 5 * slots))  # per slot: util, MiB, °C, W, MHz
        self.counts = array("i", bytes(4 * 5 * slots))
        self.present = array("i", bytes(4 * slots))

    def add_slot(self) -> None:
        self.sums.extend([0.0] * 5)
        self.counts.extend([0] * 5)
        self.present.append(0)

    def clear(self) -> None:
        self.key, self.n, self.ts = None, 0, 0.0
        self.sums = array("d", bytes(8 * len(self.sums)))
        self.counts = array("i", bytes(4 * len(self.counts)))
        self.present = array("i", bytes(4 * len(self.present)))

    def add(self, ring: Ring, at: int) -> None:
        self.n += 1
        self.ts += ring.ts[at]
        for slot, (floats, ints) in enumerate(zip(ring.f, ring.i, strict=True)):
            mib = ints[INTS * at]
            if mib == ABSENT:
                continue
            self.present[slot] += 1
            base = 5 * slot
            for k, value in enumerate((floats[FLOATS * at], mib, floats[FLOATS * at + 1], floats[FLOATS * at + 2],
                                       ints[INTS * at + 1])):
                if value == value and not (k in (1, 4) and value == NONE_INT):
                    self.sums[base + k] += value
                    self.counts[base + k] += 1

    def mean(self, slot: int, k: int) -> float | None:
        count = self.counts[5 * slot + k]
        return self.sums[5 * slot + k] / count if count else None

    def write(self, ring: Ring, at: int) -> None:
        """Store the averages as a point at ``at`` in ``ring`` (its timestamp already set)."""
        for slot in range(len(self.present)):
            if not self.present[slot]:
                continue
            util, mib, temp, power, mhz = (self.mean(slot, k) for k in range(5))
            floats, ints = ring.f[slot], ring.i[slot]
            floats[FLOATS * at], floats[FLOATS * at + 1], floats[FLOATS * at + 2] = \
                _num(util), _num(temp), _num(power)
            ints[INTS * at] = NONE_INT if mib is None else round(mib)
            ints[INTS * at + 1] = NONE_INT if mhz is None else round(mhz)


class Window:
    """One node's chart points, oldest to newest: ``old`` buckets, the open bucket, then ``recent``."""

    __slots__ = ("slots", "order", "recent", "old", "bucket")

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}  # GPU index → column
        self.order: list[tuple[int, int]] = []  # (index, slot) by index: the output order
        self.recent = Ring(RECENT_POINTS, 0)
        self.old = Ring(OLD_POINTS, 0)
        self.bucket = Bucket(0)

    def __len__(self) -> int:
        return self.old.size + (1 if self.bucket.n else 0) + self.recent.size

    def newest(self) -> float | None:
        return self.recent.ts[self.recent.pos(-1)] if self.recent.size else None

    def _slot(self, index: int) -> int | None:
        slot = self.slots.get(index)
        if slot is None:
            if len(self.slots) >= MAX_SLOTS:
                return None
            slot = self.slots[index] = len(self.slots)
            for ring in (self.recent, self.old):
                ring.add_slot()
            self.bucket.add_slot()
            self.order = sorted(self.slots.items())
        return slot

    def append(self, ts: float, rows: list[Row]) -> None:
        """Add a point; rows are (index, util, MiB, °C, W, MHz) per GPU, None where unknown."""
        if len(self.slots) + len(rows) > MAX_SLOTS and any(row[0] not in self.slots for row in rows):
            self.__init__()  # GPU indexes keep changing (no real node does): start afresh rather than grow
        recent = self.recent
        if recent.size == recent.cap:
            self._retire(recent.pos(0))
            recent.popleft()
        at = recent.push(ts)
        for index, util, mib, temp, power, mhz in rows:
            slot = self._slot(index)
            if slot is None:
                continue
            floats, ints = recent.f[slot], recent.i[slot]
            floats[FLOATS * at], floats[FLOATS * at + 1], floats[FLOATS * at + 2] = \
                _num(util), _num(temp), _num(power)
            ints[INTS * at], ints[INTS * at + 1] = _int(mib), _int(mhz)
        self._expire(ts - WINDOW_SECONDS)

    def _retire(self, at: int) -> None:
        """The oldest recent point leaves full resolution: into the open bucket, closing it first if it is
        another slice's."""
        key = int(self.recent.ts[at] // BUCKET_SECONDS)
        if self.bucket.n and self.bucket.key != key:
            self._close_bucket()
        self.bucket.key = key
        self.bucket.add(self.recent, at)

    def _close_bucket(self) -> None:
        old, bucket = self.old, self.bucket
        if old.size == old.cap:
            old.popleft()
        bucket.write(old, old.push(round(bucket.ts / bucket.n, 3)))
        bucket.clear()

    def _expire(self, cutoff: float) -> None:
        old = self.old
        while old.size and old.ts[old.pos(0)] < cutoff:
            old.popleft()
        if self.bucket.n and self.bucket.ts / self.bucket.n < cutoff and not old.size:
            self.bucket.clear()
        recent = self.recent
        while recent.size and recent.ts[recent.pos(0)] < cutoff and not self.bucket.n:
            recent.popleft()

    # ---- reads -------------------------------------------------------------------------------------

    def _point(self, ring: Ring, at: int) -> list:
        rows = [ring.row(slot, at, index) for index, slot in self.order]
        return [ring.ts[at], [row for row in rows if row is not None]]

    def _bucket_point(self) -> list:
        scratch = Ring(1, len(self.slots))
        at = scratch.push(round(self.bucket.ts / self.bucket.n, 3))
        self.bucket.write(scratch, at)
        return self._point(scratch, at)

    def newest_first(self) -> Iterator[list]:
        """Points as [ts, [[index, util, MiB, °C, W, MHz], ...]], newest first."""
        recent, old = self.recent, self.old
        for k in range(recent.size - 1, -1, -1):
            yield self._point(recent, recent.pos(k))
        if self.bucket.n:
            yield self._bucket_point()
        for k in range(old.size - 1, -1, -1):
            yield self._point(old, old.pos(k))

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

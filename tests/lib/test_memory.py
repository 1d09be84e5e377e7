"""Freed memory goes back to the system once most agent connections closed (fleet.lib.memory)."""

from __future__ import annotations

import psutil
import pytest

from fleet.lib import memory
from fleet.lib.memory import Trimmer


def test_the_trim_comes_once_connections_fell_to_half_their_peak_and_not_too_often():
    calls: list[int] = []
    trimmer = Trimmer(release=lambda: calls.append(1), min_peak=100, min_interval=30.0)
    for connections in (10, 50, 99, 40, 0):  # never 100 open: nothing worth a collection
        assert not trimmer.observe(connections, now=0.0)
    for connections, now in ((2000, 1.0), (1500, 2.0), (1001, 3.0)):
        assert not trimmer.observe(connections, now)
    assert trimmer.observe(1000, now=4.0)  # half the peak
    assert not trimmer.observe(0, now=10.0)  # within the interval
    assert trimmer.observe(0, now=40.0)  # later: 0 is below half of 1,000, the peak since the first trim
    assert not trimmer.observe(0, now=80.0)  # nothing left to fall from
    assert len(calls) == 2


def test_release_returns_freed_heap_to_the_system():
    if memory._malloc_trim() is None:
        pytest.skip("this libc has no malloc_trim (not glibc): nothing to trim")
    process = psutil.Process()
    base = process.memory_info().rss
    # 3 KB strings, as an agent's latest frame: malloc'd from the heap, not pymalloc's arenas. Every 100th
    # kept alive pins the heap's top, as the connections still open do.
    blocks = [("x" * 3000) + str(i) for i in range(60_000)]
    kept = blocks[::100]
    del blocks
    freed = process.memory_info().rss
    assert memory.release()
    trimmed = process.memory_info().rss
    assert kept
    print(f"RSS: start {base >> 20} MiB, after free {freed >> 20} MiB, after trim {trimmed >> 20} MiB")
    assert freed - trimmed > 100 * 2**20, (base, freed, trimmed)

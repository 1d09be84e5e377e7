"""Handing freed memory back to the operating system after many agent connections closed.

Python frees a closed connection's objects, but glibc keeps the freed heap pages for reuse: without a
trim, a server that held 2,000 agents stayed at twice its idle RSS long after they left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging

log = logging.getLogger(__name__)

MIN_PEAK = 100  # connections: below this, what a trim gives back is not worth a full collection
MIN_INTERVAL = 5.0  # seconds between trims: a mass disconnect over a few seconds gets one as it ends


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another libc, such as musl, has none and needs none)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release() -> bool:
    """Collect garbage, then return the heap's free pages to the system; False where the libc cannot."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class Trimmer:
    """Calls ``release`` once the connections fell to half their peak (or fewer), at most every MIN_INTERVAL."""

    def __init__(self, release=release, min_peak: int = MIN_PEAK, min_interval: float = MIN_INTERVAL) -> None:
        self.release = release
        self.min_peak = min_peak
        self.min_interval = min_interval
        self.peak = 0
        self.last = float("-inf")

    def observe(self, connections: int, now: float) -> bool:
        """Note the connections open now; True when this call released memory."""
        self.peak = max(self.peak, connections)
        if self.peak < self.min_peak or connections > self.peak // 2 or now - self.last < self.min_interval:
            return False
        log.info("agent connections fell from %d to %d: returning freed memory to the system", self.peak,
                 connections)
        self.peak, self.last = connections, now
        self.release()
        return True

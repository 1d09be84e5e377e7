"""The agent's metrics stream: samples on a fixed cadence, the buffer kept while the socket is down, and
the catch-up after a reconnect (batches sized to the server's cap, forgotten only once acknowledged).
A part of AgentSession (fleet/agent/connection.py), which holds the state these methods use."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

import psutil
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fleet.agent.buffer import BATCH_BYTES, MetricsBuffer
from fleet.agent.protocol import Ack, Error, HostSample, Metrics, MetricsBatch, Welcome, dump_metrics

if TYPE_CHECKING:
    from fleet.agent.collectors import Collector

log = logging.getLogger("fleet.agent")

MIN_METRICS_INTERVAL = 0.05
ACK_TIMEOUT = 10.0  # a catch-up batch not acknowledged by then stays buffered for the next connection
BATCH_REFUSALS = {"invalid_frame", "metrics_too_large", "frame_too_large"}  # error codes that mean "never"


class MetricsSender:
    collector: Collector
    buffer: MetricsBuffer
    home: str | os.PathLike[str] | None
    welcome: Welcome | None
    streaming: int
    stream_changed: asyncio.Event
    sampled_at: float | None
    metrics_interval: float
    batch_seq: int
    awaiting_ack: tuple[MetricsBatch, asyncio.Future] | None
    _sample_failed: bool

    def host_sample(self) -> HostSample | None:
        try:
            memory = psutil.virtual_memory()
            disk = psutil.disk_usage(os.fspath(self.home) if self.home else "/")
            return HostSample(
                cpu_percent=min(100.0, psutil.cpu_percent(interval=None)),
                memory_used_bytes=int(memory.total - memory.available),
                memory_total_bytes=int(memory.total),
                disk_used_bytes=int(disk.used),
                disk_total_bytes=int(disk.total),
            )
        except Exception as exc:
            log.debug("host sample failed: %s", exc)
            return None

    async def metrics(self) -> Metrics:
        try:
            gpus = await asyncio.to_thread(self.collector.sample)
        except Exception:
            if not self._sample_failed:
                self._sample_failed = True
                log.exception("GPU sampling failed; sending metrics without GPUs (logged once)")
            gpus = []
        return Metrics(type="metrics", ts=time.time(), gpus=gpus, host=self.host_sample())

    async def send_metrics(self, ws: ClientConnection, interval: float) -> None:
        interval = max(interval, MIN_METRICS_INTERVAL)
        self.metrics_interval = interval
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        protocols = self.welcome.protocols if self.welcome else None  # [1, 2]: the compact encoding too
        self._streams(+1)
        try:
            await self.catch_up(ws)  # first what was sampled while the socket was down, oldest first
            while True:
                # Fixed cadence, but never a burst to catch up after a slow sample.
                next_at = max(next_at + interval, loop.time())
                await asyncio.sleep(next_at - loop.time())
                sample = await self.metrics()
                self.sampled_at = loop.time()
                try:
                    await ws.send(dump_metrics(sample, protocols))
                except ConnectionClosed:
                    self.buffer.add(sample)
                    raise
        except ConnectionClosed:
            pass
        finally:
            self._streams(-1)

    def _streams(self, change: int) -> None:
        self.streaming += change
        self.stream_changed.set()  # the sampler of buffer_while_down looks again

    async def catch_up(self, ws: ClientConnection) -> None:
        """Send the buffer in frames the server announced it takes; forget points only when acknowledged."""
        cap = (self.welcome.max_metrics_frame_bytes if self.welcome else None) or BATCH_BYTES
        loop = asyncio.get_running_loop()
        while True:
            self.batch_seq += 1
            batch = self.buffer.next_batch(max_bytes=cap, seq=self.batch_seq)
            if batch is None:
                return
            outcome = loop.create_future()
            self.awaiting_ack = (batch, outcome)
            try:
                await ws.send(batch.model_dump_json(exclude_none=True, exclude_defaults=True))  # compact
                # asyncio.wait, not wait_for: on 3.11 wait_for swallows a cancel that meets a done future.
                await asyncio.wait({outcome}, timeout=ACK_TIMEOUT)
            finally:
                self.awaiting_ack = None
            if not outcome.done():
                log.warning("catch-up batch %d not acknowledged; %d points kept for the next connection",
                            batch.seq, len(self.buffer))
                return

    def _settle_batch(self, outcome: Ack | Error) -> None:
        """An ack (or a refusal that can never be taken) for the batch in flight: forget its points now,
        in the receive loop, so a metrics task cancelled meanwhile cannot send them twice."""
        if self.awaiting_ack is None:
            return
        batch, future = self.awaiting_ack
        refused = isinstance(outcome, Error) and outcome.code in BATCH_REFUSALS
        if future.done() or not (refused or (isinstance(outcome, Ack) and outcome.seq == batch.seq)):
            return
        if refused:
            log.warning("server refused catch-up batch %d (%s: %s); dropping its %d points",
                        batch.seq, outcome.code, outcome.detail, len(batch.points))
            self.buffer.dropped += len(batch.points)
        self.buffer.accepted(batch, counted=not refused)
        future.set_result(outcome)

    async def buffer_while_down(self) -> None:
        """Keep sampling while no connection streams metrics, so a reconnect can send a catch-up.

        The cadence goes on from the last sample, live or buffered, at the interval the server last asked
        for: a stream that stops wakes this loop, whose next sample is due one interval after the stream's
        last (a sleep begun before a welcome changed the interval would otherwise let a short absence go
        unsampled)."""
        loop = asyncio.get_running_loop()
        if self.sampled_at is None:
            self.sampled_at = loop.time()  # the first sample one interval after start, as a stream's
        while True:
            self.stream_changed.clear()
            if self.streaming:
                await self.stream_changed.wait()
                continue
            wait = self.sampled_at + self.metrics_interval - loop.time()
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):  # not wait_for: it can swallow a cancel on 3.11
                        await self.stream_changed.wait()
                except TimeoutError:
                    pass
                continue  # look again: a stream may have started, or stopped with a new interval
            sample = await self.metrics()
            self.sampled_at = loop.time()
            if not self.streaming:  # a stream that began meanwhile has sent its catch-up already
                self.buffer.add(sample)

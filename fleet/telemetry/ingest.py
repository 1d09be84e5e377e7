"""Telemetry for one agent connection: what AgentConsumer calls. Everything here is synchronous,
in-memory and O(GPUs) per frame (DESIGN §6)."""

from __future__ import annotations

from django.conf import settings

from fleet.agent import protocol
from fleet.telemetry.flusher import ensure_flusher, metrics_interval
from fleet.telemetry.limits import FrameGate
from fleet.telemetry.live import live_telemetry
from fleet.telemetry.store import get_store


class AgentTelemetry:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.gate = FrameGate(settings.FLEET_AGENT_MAX_FRAMES_PER_SECOND)
        self.told = settings.FLEET_METRICS_INTERVAL  # the interval this agent was last told
        self.open = True
        get_store()  # decides, before the first frame, whether this process keeps points for Redis
        live_telemetry.attach(node_id)
        ensure_flusher()

    def admit(self) -> bool:
        """Before parsing: False drops the frame (over this agent's frame budget)."""
        if self.gate.allow():
            return True
        live_telemetry.counters["dropped"] += 1
        return False

    @property
    def flooding(self) -> bool:
        return self.gate.flooding

    def welcome_interval(self) -> float:
        self.told = metrics_interval()
        return self.told

    def on_metrics(
        self, frame: protocol.Metrics | protocol.MetricsBatch, size: int
    ) -> protocol.Control | protocol.FrameError | None:
        """Take a metrics frame; returns a frame to send back (a control frame when the interval
        changed, an error when refused) or None."""
        if size > settings.FLEET_MAX_METRICS_FRAME_BYTES:
            live_telemetry.counters["rejected"] += 1
            return protocol.FrameError(
                "metrics_too_large",
                f"frame: {size} bytes is over the {settings.FLEET_MAX_METRICS_FRAME_BYTES}-byte limit for "
                "metrics frames (FLEET_MAX_METRICS_FRAME_BYTES); send fewer processes per GPU",
            )
        if isinstance(frame, protocol.Metrics):
            if not self.gate.metrics_allowed(self.told):
                live_telemetry.counters["dropped"] += 1
                if self.gate.flooding:  # errors count against the consumer's error budget: it closes
                    return protocol.FrameError(
                        "rate_limited", f"frame: metrics more than twice per {self.told:g}s interval; slow down")
                return None
            live_telemetry.ingest(self.node_id, frame, size)
        else:
            live_telemetry.ingest_batch(self.node_id, frame, size)
        interval = metrics_interval()
        if interval != self.told:
            self.told = interval
            reason = "server under load" if interval > settings.FLEET_METRICS_INTERVAL else "load back to normal"
            return protocol.Control(type="control", metrics_interval=interval, reason=reason)
        return None

    def seen(self) -> None:
        """Any frame but metrics (those count already): last_seen in the flusher's next bulk write."""
        live_telemetry.seen.add(self.node_id)

    def close(self) -> None:
        if self.open:
            self.open = False
            live_telemetry.detach(self.node_id)

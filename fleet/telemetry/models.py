"""Stored telemetry: 1-minute rollups per GPU and alerts. Live values never touch the database."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from fleet.inventory.models import Node
from fleet.lib.choices import ColouredChoices


class GpuRollup(models.Model):
    """One GPU over one minute: min/avg/max of the samples received in it, and the energy it used."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpu_rollups")
    gpu_index = models.PositiveIntegerField()
    gpu_uuid = models.CharField(max_length=96)
    minute = models.DateTimeField(help_text="Start of the minute (UTC).")
    samples = models.PositiveIntegerField()
    util_min = models.FloatField(null=True)
    util_avg = models.FloatField(null=True)
    util_max = models.FloatField(null=True)
    mem_used_min = models.BigIntegerField(null=True)
    mem_used_avg = models.BigIntegerField(null=True)
    mem_used_max = models.BigIntegerField(null=True)
    mem_total = models.BigIntegerField(null=True)
    temp_min = models.FloatField(null=True)
    temp_avg = models.FloatField(null=True)
    temp_max = models.FloatField(null=True)
    power_min = models.FloatField(null=True)
    power_avg = models.FloatField(null=True)
    power_max = models.FloatField(null=True)
    energy_j = models.FloatField(null=True, help_text="Energy used in this minute (counter delta), joules.")

    class Meta:
        ordering = ["node_id", "minute", "gpu_index"]
        constraints = [
            models.UniqueConstraint(fields=["node", "gpu_uuid", "minute"], name="rollup_unique_gpu_minute"),
        ]
        indexes = [models.Index(fields=["node", "minute"]), models.Index(fields=["minute"])]

    def __str__(self) -> str:
        return f"{self.node_id}/gpu{self.gpu_index} {self.minute:%Y-%m-%d %H:%M}"


class AlertKind(models.TextChoices):
    GPU_LOST = "gpu_lost", "GPU lost"
    XID = "xid", "XID error"
    ECC = "ecc_uncorrected", "Uncorrected ECC error"
    OVERHEAT = "overheat", "Temperature over threshold"
    NODE_OFFLINE = "node_offline", "Node offline"


class AlertSeverity(ColouredChoices):
    CRITICAL = "critical", "Critical", "red"
    WARNING = "warning", "Warning", "amber"
    INFO = "info", "Info", "grey"


class Alert(models.Model):
    """A problem derived from telemetry or presence. Conditions (lost, hot, offline) stay open until
    they clear; events (XID, ECC) are one row per occurrence burst, counted while it repeats."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    severity = models.CharField(max_length=16, choices=AlertSeverity.choices)
    gpu_index = models.PositiveIntegerField(null=True, blank=True)
    gpu_uuid = models.CharField(max_length=96, blank=True)
    code = models.PositiveIntegerField(null=True, blank=True, help_text="XID number for XID alerts.")
    message = models.CharField(max_length=300)
    count = models.PositiveIntegerField(default=1)
    opened_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # An operator's handling (fleet/telemetry/alert_actions.py): acknowledged (who, when) or silenced until.
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    silenced_until = models.DateTimeField(null=True, blank=True)
    silenced_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")

    class Meta:
        ordering = ["-opened_at", "-id"]
        indexes = [models.Index(fields=["node", "kind", "gpu_uuid", "resolved_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.node_id}: {self.message}"

    @property
    def severity_colour(self) -> str:
        return AlertSeverity(self.severity).colour

    @property
    def active(self) -> bool:
        return self.resolved_at is None

    @property
    def silenced(self) -> bool:
        return self.silenced_until is not None and self.silenced_until > timezone.now()

    @property
    def firing(self) -> bool:
        """Open and nobody has taken it: neither acknowledged nor silenced (the top bar counts these)."""
        return self.active and self.acknowledged_at is None and not self.silenced

    @property
    def duration(self):
        """How long it lasted (resolved) or has lasted so far (open): a timedelta."""
        return (self.resolved_at or timezone.now()) - self.opened_at

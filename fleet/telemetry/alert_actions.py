"""What operators do with alerts: acknowledge (who, when) and silence for a while; both audited. And the
count the top bar shows: open alerts nobody has taken yet, pushed live whenever it may have changed."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from fleet import events
from fleet.accounts import audit
from fleet.lib.errors import FieldError
from fleet.telemetry.models import Alert

# The choices an operator gets for a silence: (seconds, label).
SILENCE_CHOICES = [(15 * 60, "15 minutes"), (3600, "1 hour"), (4 * 3600, "4 hours"), (24 * 3600, "1 day"),
                   (7 * 86400, "7 days")]


def firing(now: Any = None) -> QuerySet[Alert]:
    """Open alerts neither acknowledged nor silenced at ``now``."""
    now = now or timezone.now()
    return Alert.objects.filter(resolved_at__isnull=True, acknowledged_at__isnull=True).filter(
        Q(silenced_until__isnull=True) | Q(silenced_until__lte=now))


def firing_count() -> int:
    return firing().count()


def publish_count(node_ids: Iterable[int] = ()) -> None:
    """After commit: the new count to the pages that listen (``data-summary="alerts.firing"`` in the top bar):
    the fleet group, and the node pages of ``node_ids``."""

    def send() -> None:
        summary = {"alerts": {"firing": firing_count()}}  # counted once committed, as the pages would
        message = {"type": "live.message", "payload": {"kind": "summary", "summary": summary}}
        for group in [events.FLEET_GROUP, *(events.node_live_group(node_id) for node_id in sorted(node_ids))]:
            events.publish(group, message)

    transaction.on_commit(send)


def acknowledge(actor: Any, alert_id: int) -> Alert:
    """Mark an open alert as taken by ``actor``; acknowledging it again changes nothing."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_id)
        if alert.resolved_at is not None:
            raise FieldError("alert", "this alert is resolved already; there is nothing to acknowledge")
        if alert.acknowledged_at is None:
            alert.acknowledged_at = timezone.now()
            alert.acknowledged_by = actor
            alert.save(update_fields=["acknowledged_at", "acknowledged_by"])
            audit.record(actor, "alert.acknowledge", alert, node=alert.node_id, kind=alert.kind)
            publish_count([alert.node_id])
    return alert


def silence(actor: Any, alert_id: int, seconds: int) -> Alert:
    """Silence an open alert for ``seconds`` (one of SILENCE_CHOICES): it leaves the top bar's count until
    then, and counts again after if it is still open and nobody acknowledged it."""
    if seconds not in dict(SILENCE_CHOICES):
        allowed = ", ".join(label for _, label in SILENCE_CHOICES)
        raise FieldError("duration", f"choose one of {allowed}")
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_id)
        if alert.resolved_at is not None:
            raise FieldError("alert", "this alert is resolved already; there is nothing to silence")
        alert.silenced_until = timezone.now() + timedelta(seconds=seconds)
        alert.silenced_by = actor
        alert.save(update_fields=["silenced_until", "silenced_by"])
        audit.record(actor, "alert.silence", alert, node=alert.node_id, kind=alert.kind,
                     until=alert.silenced_until.isoformat())
        publish_count([alert.node_id])
    return alert

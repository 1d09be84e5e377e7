"""Alerts as operators run them: start time and duration, acknowledge (who, when), silence for a chosen
time, resolved alerts kept with their duration; the top bar's count; viewers read only; audited."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet import events
from fleet.accounts.models import AuditEvent
from fleet.telemetry import alert_actions
from fleet.telemetry.models import Alert

pytestmark = pytest.mark.django_db


def _alert(node, **fields) -> Alert:
    values = {"kind": "overheat", "severity": "warning", "message": "GPU 0 at 91 °C", **fields}
    return Alert.objects.create(node=node, **values)


def _count_in_top_bar(page: str) -> str:
    marker = 'data-summary="alerts.firing" data-alert-count>'
    start = page.index(marker) + len(marker)
    return page[start:page.index("<", start)]


def test_alert_page_shows_start_duration_and_state(client: Client, charlie, web_node) -> None:
    node = web_node("gpu-01", gpus=1)
    opened = timezone.now() - timedelta(minutes=5, seconds=3)
    _alert(node, opened_at=opened)
    _alert(node, kind="xid", severity="critical", message="XID 79", opened_at=opened - timedelta(hours=3),
           resolved_at=opened - timedelta(hours=1))
    client.force_login(charlie)
    page = client.get(reverse("alerts")).content.decode()
    assert opened.strftime("%Y-%m-%d %H:%M:%S") in page
    assert re.search(r"data-alert-duration>5 min \d+ s <span", page)  # open: how long so far
    assert "2 h" in page and "Resolved" in page  # resolved alerts stay, with their duration
    assert "Acknowledge" not in page and "Silence" not in page  # a viewer reads
    assert _count_in_top_bar(page) == "1"


def test_operator_acknowledges_and_it_leaves_the_count(client: Client, bob, charlie, web_node) -> None:
    node = web_node("gpu-01", gpus=1)
    alert = _alert(node)
    other = _alert(node, kind="gpu_lost", severity="critical", message="GPU 1 lost")
    client.force_login(charlie)
    assert client.post(reverse("alert-acknowledge", args=[alert.pk])).status_code == 403
    alert.refresh_from_db()
    assert alert.acknowledged_at is None

    client.force_login(bob)
    assert _count_in_top_bar(client.get(reverse("overview")).content.decode()) == "2"
    response = client.post(reverse("alert-acknowledge", args=[alert.pk]), {"next": "/alerts/?state=open"})
    assert response.status_code == 302 and response["Location"] == "/alerts/?state=open"
    alert.refresh_from_db()
    assert alert.acknowledged_by == bob and alert.acknowledged_at is not None
    page = client.get(reverse("alerts")).content.decode()
    assert "Acknowledged</span> by bob" in page and _count_in_top_bar(page) == "1"
    event = AuditEvent.objects.get(action="alert.acknowledge")
    assert event.actor == bob and event.target_id == str(alert.pk)
    client.post(reverse("alert-acknowledge", args=[alert.pk]))  # again: no change, no second audit row
    assert AuditEvent.objects.filter(action="alert.acknowledge").count() == 1
    assert alert_actions.firing_count() == 1 and list(alert_actions.firing()) == [other]


def test_silence_for_a_chosen_time_then_it_counts_again(client: Client, bob, web_node) -> None:
    node = web_node("gpu-01", gpus=1)
    alert = _alert(node)
    client.force_login(bob)
    before = timezone.now()
    client.post(reverse("alert-silence", args=[alert.pk]), {"duration": "3600"})
    alert.refresh_from_db()
    assert alert.silenced_by == bob
    assert timedelta(minutes=59) < alert.silenced_until - before <= timedelta(hours=1, seconds=5)
    assert alert_actions.firing_count() == 0
    assert "Silenced</span> until" in client.get(reverse("alerts")).content.decode()
    assert AuditEvent.objects.get(action="alert.silence").details["until"] == alert.silenced_until.isoformat()
    assert alert_actions.firing(now=alert.silenced_until + timedelta(seconds=1)).count() == 1  # it expires

    refused = client.post(reverse("alert-silence", args=[alert.pk]), {"duration": "12"}, follow=True)
    assert "duration: choose one of" in refused.content.decode()


def test_a_resolved_alert_cannot_be_taken(client: Client, bob, web_node) -> None:
    alert = _alert(web_node("gpu-01", gpus=1), resolved_at=timezone.now())
    client.force_login(bob)
    response = client.post(reverse("alert-acknowledge", args=[alert.pk]), follow=True)
    assert "alert: this alert is resolved already" in response.content.decode()
    assert not AuditEvent.objects.filter(action="alert.acknowledge").exists()


def test_the_count_is_pushed_to_open_pages(bob, web_node, django_capture_on_commit_callbacks) -> None:
    node = web_node("gpu-01", gpus=1)
    alert = _alert(node)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(events.FLEET_GROUP, channel)
    with django_capture_on_commit_callbacks(execute=True):
        alert_actions.acknowledge(bob, alert.pk)
    message = async_to_sync(layer.receive)(channel)
    assert message["payload"] == {"kind": "summary", "summary": {"alerts": {"firing": 0}}}

"""Simulated faults become alerts in the feed; node offline opens and a hello resolves an alert."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.utils import timezone

from fleet.agent.collectors.faults import parse_fault
from fleet.agent.collectors.simulated import SimulatedCollector
from fleet.agent.protocol import Metrics, dump
from fleet.agents import presence
from fleet.inventory.models import Node, NodeStatus
from fleet.telemetry import records
from fleet.telemetry.models import Alert, AlertKind
from tests.server.test_agent_socket import connect_and_hello, hello

pytestmark = pytest.mark.django_db(transaction=True)
T = 1_750_000_000.0


async def test_simulated_faults_become_alerts_in_the_feed(make_node, settings, charlie):
    settings.FLEET_METRICS_INTERVAL = 1e-6
    settings.FLEET_GPU_TEMP_ALERT_C = 85
    node, secret = await database_sync_to_async(make_node)()
    faults = [parse_fault(f) for f in ("lost:gpu=3@30s", "xid:79,gpu=0", "xid:13,gpu=1", "ecc:gpu=2",
                                       "overheat:gpu=4")]
    collector = SimulatedCollector("h100x8", "fault-node", faults=faults, started=T)
    comm = await connect_and_hello(secret, hello(gpus=0))
    for t in (T + 1, T + 2, T + 31, T + 32):
        await comm.send_to(text_data=dump(Metrics(type="metrics", ts=t, gpus=collector.sample(t))))

    def alerts():
        return sorted((a.kind, a.gpu_index, a.code, a.severity) for a in Alert.objects.filter(node=node))

    expected = [("ecc_uncorrected", 2, None, "critical"), ("gpu_lost", 3, None, "critical"),
                ("overheat", 4, None, "warning"), ("xid", 0, 79, "critical")]
    for _ in range(100):  # the flusher writes alerts every couple of seconds, in one thread hop
        if await database_sync_to_async(alerts)() == expected:
            break
        await asyncio.sleep(0.1)
    assert await database_sync_to_async(alerts)() == expected  # XID 13 is an application XID: ignored
    await comm.disconnect()

    client = Client()
    await database_sync_to_async(client.force_login)(charlie)
    feed = (await database_sync_to_async(client.get)(f"/alerts/feed/?node={node.pk}")).content.decode()
    assert "XID 79" in feed and "is lost" in feed and "uncorrected ECC" in feed and "96 °C" in feed
    page = (await database_sync_to_async(client.get)("/alerts/?state=open")).content.decode()
    assert page.count('data-alert-id="') == 4


def test_node_offline_opens_an_alert_and_hello_resolves_it(make_node, settings):
    from datetime import timedelta

    node, _ = make_node()
    stale = timezone.now() - timedelta(seconds=settings.FLEET_OFFLINE_AFTER + 5)
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.ONLINE, last_seen=stale)
    assert presence.sweep_offline() == [node.pk]
    alert = Alert.objects.get(node=node)
    assert (alert.kind, alert.severity, alert.active) == (AlertKind.NODE_OFFLINE, "critical", True)
    assert alert.severity_colour == "red"
    records.node_offline([node.pk])  # a second sweep (another process) does not duplicate it
    assert Alert.objects.filter(node=node).count() == 1

    from fleet.agent.protocol import Hello

    presence.record_hello(node.pk, Hello.model_validate(hello(gpus=1)))
    alert.refresh_from_db()
    assert alert.resolved_at is not None


def test_repeated_event_bumps_the_open_alert(make_node):
    node, _ = make_node()
    item = {"node_id": node.pk, "kind": "xid", "severity": "critical", "gpu_index": 0, "gpu_uuid": "GPU-0",
            "code": 79, "message": "GPU 0 reported XID 79"}
    records.record_alerts([item])
    records.record_alerts([item])
    alert = Alert.objects.get(node=node)
    assert alert.count == 2
    records.record_alerts([{**item, "code": 48, "message": "GPU 0 reported XID 48"}])
    assert Alert.objects.filter(node=node).count() == 2

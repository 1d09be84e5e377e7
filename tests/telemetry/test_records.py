"""Rollup rows in bulk, retention, history buckets, and the engine task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from fleet import engine
from fleet.agent.protocol import Metrics
from fleet.telemetry import flusher, records
from fleet.telemetry.live import LiveTelemetry
from fleet.telemetry.models import Alert, GpuRollup
from tests.telemetry.conftest import gpu, metrics_frame

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC)


def rollup(node, minute: datetime, util: float, index: int = 0) -> GpuRollup:
    return GpuRollup(node=node, gpu_index=index, gpu_uuid=f"GPU-{index}", minute=minute, samples=60,
                     util_min=util, util_avg=util, util_max=util + 5, temp_avg=50.0, power_avg=200.0,
                     mem_used_avg=1 << 30)


def test_hub_rollups_are_written_in_bulk(make_node, django_assert_max_num_queries):
    node, _ = make_node()
    telemetry = LiveTelemetry()
    base = NOW.timestamp() // 60 * 60
    for minute in range(3):
        for second in (0, 30):
            ts = base + 60 * minute + second
            telemetry.ingest(node.pk, Metrics.model_validate(metrics_frame(ts, [gpu(i) for i in range(8)])), now=ts)
    telemetry.finish_stale(base + 400)
    rollups, alerts = telemetry.take()
    assert len(rollups) == 24 and alerts == []
    with django_assert_max_num_queries(2):  # one INSERT for 24 rows (plus a savepoint on some backends)
        flusher.write_db(rollups, alerts)
    assert GpuRollup.objects.filter(node=node).count() == 24
    flusher.write_db(rollups, [])  # the same minutes again (a catch-up overlap): kept once
    assert GpuRollup.objects.filter(node=node).count() == 24


def test_retention_prunes_old_rollups_and_resolved_alerts(make_node, settings):
    settings.FLEET_METRICS_RETENTION = 30 * 86400
    node, _ = make_node()
    GpuRollup.objects.bulk_create([rollup(node, NOW - timedelta(days=31), 10),
                                   rollup(node, NOW - timedelta(days=29), 20)])
    old = Alert.objects.create(node=node, kind="xid", severity="critical", message="old",
                               opened_at=NOW - timedelta(days=40), resolved_at=NOW - timedelta(days=35))
    still_open = Alert.objects.create(node=node, kind="gpu_lost", severity="critical", message="open",
                                      opened_at=NOW - timedelta(days=40))
    assert records.prune(now=NOW) == (1, 1)
    assert list(GpuRollup.objects.values_list("util_avg", flat=True)) == [20]
    assert not Alert.objects.filter(pk=old.pk).exists() and Alert.objects.filter(pk=still_open.pk).exists()
    assert "telemetry-retention" in [name for name, _, _ in engine.tasks()]


def test_history_buckets_and_view(make_node, charlie):
    node, _ = make_node()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    GpuRollup.objects.bulk_create([rollup(node, now - timedelta(minutes=m), float(m)) for m in range(1, 11)]
                                  + [rollup(node, now - timedelta(hours=3), 99.0)])
    hour = records.history(node.pk, "1h")
    assert hour["bucket"] == 60 and len(hour["gpus"][0]) == 10
    day = records.history(node.pk, "24h")
    assert sum(1 for p in day["gpus"][0] if p[1] == 99.0) == 1  # the 3-hour-old minute is in the day view
    client = Client()
    client.force_login(charlie)
    response = client.get(f"/nodes/{node.pk}/telemetry/history/?range=1h")
    assert response.status_code == 200 and len(response.json()["gpus"]["0"]) == 10
    bad = client.get(f"/nodes/{node.pk}/telemetry/history/?range=1y")
    assert bad.status_code == 400 and bad.json()["error"] == "range: must be one of 1h, 24h, 7d"
    assert client.get("/nodes/999999/telemetry/history/").status_code == 404


def test_last_seen_for_all_nodes_in_one_update_and_offline_nodes_come_back(make_node, django_assert_max_num_queries):
    from fleet.inventory.models import Node, NodeStatus

    online = [make_node(f"on-{i}", status=NodeStatus.ONLINE)[0] for i in range(5)]
    away, _ = make_node("away", status=NodeStatus.OFFLINE)
    with django_assert_max_num_queries(8):  # one UPDATE for the five, a read, and the revival's CAS
        records.mark_seen([n.pk for n in online] + [away.pk], now=NOW)
    assert set(Node.objects.filter(last_seen=NOW).values_list("name", flat=True)) == {n.name for n in online} | {"away"}
    assert Node.objects.get(pk=away.pk).status == NodeStatus.ONLINE


def test_rollups_of_a_deleted_node_are_dropped_not_the_batch(make_node):
    node, _ = make_node()
    rows = [{"node_id": node.pk, "gpu_index": 0, "gpu_uuid": "GPU-0", "minute": NOW.timestamp(), "samples": 1},
            {"node_id": 999_999, "gpu_index": 0, "gpu_uuid": "GPU-0", "minute": NOW.timestamp(), "samples": 1}]
    assert records.write_rollups(rows) == 1

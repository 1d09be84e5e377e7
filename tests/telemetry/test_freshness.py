"""Stale data is never served as live: a node that is offline, revoked or silent has no current values in the
pages' JSON (only ``since``, its newest frame's time) and no series in /metrics: one rule for all three."""

from __future__ import annotations

import ipaddress
import time

import pytest

from fleet.inventory.models import Node, NodeStatus
from fleet.telemetry.freshness import is_live, stale_after
from fleet.telemetry.live import live_telemetry
from tests.telemetry.test_exporter import known_node, scrape  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


def test_is_live_needs_an_online_node_and_a_recent_frame(settings):
    settings.FLEET_OFFLINE_AFTER = 20
    now = 1_000_000.0
    assert stale_after() == 40
    assert is_live(NodeStatus.ONLINE, now - 39, now)
    assert not is_live(NodeStatus.ONLINE, now - 41, now)
    assert not is_live(NodeStatus.ONLINE, None, now)
    for status in (NodeStatus.OFFLINE, NodeStatus.REVOKED, NodeStatus.NEVER_SEEN):
        assert not is_live(status, now, now)


@pytest.mark.parametrize("role", ["charlie", "bob", "alice"])  # viewer, operator, admin: all see the same
@pytest.mark.parametrize("status", [NodeStatus.ONLINE, NodeStatus.OFFLINE, NodeStatus.REVOKED])
def test_pages_and_metrics_agree_on_what_is_live(client, request, known_node, settings, status, role):  # noqa: F811
    settings.FLEET_METRICS_ALLOW = (ipaddress.ip_network("127.0.0.1/32"),)
    Node.objects.filter(pk=known_node.pk).update(status=status)
    frame_ts = live_telemetry.nodes[known_node.pk].ts
    client.force_login(request.getfixturevalue(role))
    live = status == NodeStatus.ONLINE

    snap = client.get(f"/nodes/{known_node.pk}/telemetry/live/").json()
    assert snap["live"] is live and snap["status"] == status
    assert snap["since"] == pytest.approx(frame_ts)
    assert (snap["latest"] is not None) is live
    assert len(snap["points"]) == 1  # the window stays: charts draw the line up to where it ends
    assert len(snap["points"][0][1][0]) == 6  # index, util, MiB, °C, W, SM clock MHz
    assert snap["stale_after"] == stale_after() and abs(snap["now"] - time.time()) < 5

    heat = client.get("/telemetry/heatmap/").json()
    (node,) = heat["nodes"]
    assert node["live"] is live and node["since"] == pytest.approx(frame_ts)
    assert node["models"] == {"0": "NVIDIA H100 80GB HBM3", "1": "NVIDIA H100 80GB HBM3"}
    if live:
        assert [cell[:2] + cell[4:] for cell in node["heat"]] == [[0, 55.0, 0, 350.5, 1000, 81559],
                                                                   [1, 3.0, 0, 300.0, 0, 81559]]
    else:
        assert node["heat"] == []

    families = scrape(client)
    assert bool(families["DCGM_FI_DEV_GPU_UTIL"].samples) is live


def test_a_silent_online_node_is_not_live(client, charlie, known_node):  # noqa: F811
    live_telemetry.nodes[known_node.pk].ts = time.time() - stale_after() - 1
    live_telemetry.nodes[known_node.pk].seq += 1
    client.force_login(charlie)
    snap = client.get(f"/nodes/{known_node.pk}/telemetry/live/").json()
    assert snap["live"] is False and snap["latest"] is None and snap["since"] is not None
    assert client.get("/telemetry/heatmap/").json()["nodes"][0]["heat"] == []

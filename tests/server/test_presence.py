"""Offline detection: a node goes offline only after FLEET_OFFLINE_AFTER without a frame, never flaps."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.agents import presence
from fleet.inventory import services
from fleet.inventory.models import Node, NodeStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def changes(monkeypatch):
    """Every status change that reaches browsers, in order."""
    seen: list[tuple[int, str]] = []
    original = services._publish_node

    def spy(node):
        seen.append((node.pk, node.status if isinstance(node.status, str) else node.status))
        original(node)

    monkeypatch.setattr(services, "_publish_node", spy)
    return seen


def online_node(make_node, seen_at):
    node, _ = make_node()
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.ONLINE, last_seen=seen_at)
    return node


def test_offline_only_after_the_threshold(make_node, settings, changes):
    settings.FLEET_OFFLINE_AFTER = 15
    t0 = timezone.now()
    node = online_node(make_node, t0)
    assert presence.sweep_offline(now=t0 + timedelta(seconds=14.9)) == []
    assert Node.objects.get(pk=node.pk).status == NodeStatus.ONLINE
    assert presence.sweep_offline(now=t0 + timedelta(seconds=15.1)) == [node.pk]
    assert Node.objects.get(pk=node.pk).status == NodeStatus.OFFLINE
    assert presence.sweep_offline(now=t0 + timedelta(seconds=30)) == []  # already offline: no second event
    assert [pk for pk, _ in changes] == [node.pk]


def test_regular_frames_never_flap(make_node, settings, changes):
    settings.FLEET_OFFLINE_AFTER = 15
    t0 = timezone.now()
    node = online_node(make_node, t0)
    # Ten minutes of frames every 5 s with jitter, sweeping every 3 s.
    for second in range(0, 600, 3):
        now = t0 + timedelta(seconds=second)
        if second % 5 in (0, 1, 2) and second % 15 != 9:
            presence.record_seen(node.pk, now=now)
        presence.sweep_offline(now=now)
    assert Node.objects.get(pk=node.pk).status == NodeStatus.ONLINE
    assert changes == []


def test_a_frame_after_going_offline_brings_it_back_once(make_node, settings, changes):
    settings.FLEET_OFFLINE_AFTER = 15
    t0 = timezone.now()
    node = online_node(make_node, t0)
    presence.sweep_offline(now=t0 + timedelta(seconds=20))
    presence.record_seen(node.pk, now=t0 + timedelta(seconds=21))
    presence.record_seen(node.pk, now=t0 + timedelta(seconds=22))
    fresh = Node.objects.get(pk=node.pk)
    assert fresh.status == NodeStatus.ONLINE
    assert fresh.last_seen == t0 + timedelta(seconds=22)
    assert len(changes) == 2  # offline, online: nothing more


def test_a_frame_racing_the_sweep_wins(make_node, settings):
    """The sweep's update re-checks last_seen, so a node seen after the cutoff stays online."""
    settings.FLEET_OFFLINE_AFTER = 15
    t0 = timezone.now()
    node = online_node(make_node, t0)
    cutoff = t0 + timedelta(seconds=1)
    presence.record_seen(node.pk, now=t0 + timedelta(seconds=2))  # arrives between the select and the update
    assert services.set_status(node.pk, NodeStatus.OFFLINE, expect=NodeStatus.ONLINE, seen_before=cutoff) is False
    assert Node.objects.get(pk=node.pk).status == NodeStatus.ONLINE


def test_revoked_nodes_are_not_brought_back_by_frames(make_node):
    node, _ = make_node()
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.REVOKED)
    presence.record_seen(node.pk)
    assert Node.objects.get(pk=node.pk).status == NodeStatus.REVOKED


def test_a_hello_that_changes_gpus_of_an_online_node_reaches_browsers(make_node, changes):
    """The node's row (GPU count, memory) and the overview's numbers change although its status does not."""
    from fleet.agent.protocol import Hello
    from tests.server.test_agent_socket import hello

    node, _ = make_node()
    presence.record_hello(node.pk, Hello.model_validate(hello(gpus=2)))
    assert changes == [(node.pk, NodeStatus.ONLINE)]  # it came online
    presence.record_hello(node.pk, Hello.model_validate(hello(gpus=4)))
    assert len(changes) == 2 and Node.objects.get(pk=node.pk).status == NodeStatus.ONLINE

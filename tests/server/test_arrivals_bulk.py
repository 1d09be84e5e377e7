"""The flusher tick's writes cost a fixed number of statements whatever the number of nodes (issue 11)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.agent.protocol import RuntimeStatus
from fleet.agents import arrivals
from fleet.hub import commands
from fleet.inventory.models import Gpu, GpuState, Node, NodeRuntime, NodeStatus
from fleet.telemetry import flusher
from fleet.telemetry.models import Alert, AlertKind, AlertSeverity

NOW = timezone.now()
OLD = NOW - timedelta(hours=1)


def _fleet(n: int, prefix: str) -> list[int]:
    """n nodes: half online, half offline with an open node-offline alert; one GPU each."""
    nodes = Node.objects.bulk_create([
        Node(name=f"{prefix}-{i}", status=NodeStatus.ONLINE if i % 2 else NodeStatus.OFFLINE, last_seen=OLD)
        for i in range(n)])
    Gpu.objects.bulk_create([Gpu(node=node, index=0, uuid=f"GPU-{node.pk}", name="H100", last_seen=OLD)
                             for node in nodes])
    Alert.objects.bulk_create([Alert(node=node, kind=AlertKind.NODE_OFFLINE, severity=AlertSeverity.CRITICAL,
                                     message="offline", opened_at=OLD, last_at=OLD)
                               for node in nodes if node.status == NodeStatus.OFFLINE])
    return [node.pk for node in nodes]


def _serving(node_id: int) -> list[RuntimeStatus]:
    return [RuntimeStatus.model_validate({"repo": "acme/tiny", "sha": "a" * 40, "runtime": "llamacpp",
                                          "state": "ready", "tokens_served": node_id})]


RUNTIME_INSERT = 'INSERT INTO "inventory_noderuntime"'


def _tick(ids: list[int], captured) -> tuple[int, int]:
    """Statements of one tick's database writes (post-commit reads included), and of them the runtime
    INSERTs: those come in batches (a thousand rows, fewer on SQLite with its bound-parameter limit)."""
    with CaptureQueriesContext(connection) as queries, captured(execute=True):
        flusher.write_db([], [], seen=ids, arrived={node_id: _serving(node_id) for node_id in ids})
    inserts = sum(query["sql"].startswith(RUNTIME_INSERT) for query in queries.captured_queries)
    return len(queries) - inserts, inserts


@pytest.mark.django_db
def test_one_tick_runs_the_same_statements_for_ten_and_five_hundred_nodes(django_capture_on_commit_callbacks):
    few, many = _fleet(10, "few"), _fleet(500, "many")
    (statements_few, inserts_few), (statements_many, inserts_many) = (
        _tick(few, django_capture_on_commit_callbacks), _tick(many, django_capture_on_commit_callbacks))
    assert statements_few == statements_many
    assert inserts_few == 1 and inserts_many <= 500 // 50
    assert set(Node.objects.values_list("status", flat=True)) == {NodeStatus.ONLINE}
    assert not Node.objects.filter(last_seen=OLD).exists()
    assert not Alert.objects.filter(resolved_at__isnull=True).exists()
    assert not Gpu.objects.filter(last_seen=OLD).exists()
    assert NodeRuntime.objects.count() == 510 and NodeRuntime.objects.get(node_id=many[7]).tokens_served == many[7]
    # steady state (every node online, nothing to revive or resolve, runtimes replaced): fixed as well
    assert _tick(few, django_capture_on_commit_callbacks)[0] == _tick(many, django_capture_on_commit_callbacks)[0]
    assert NodeRuntime.objects.count() == 510


@pytest.mark.django_db
def test_mark_seen_alone_is_fixed_too(django_capture_on_commit_callbacks):
    from fleet.telemetry import records

    counts = []
    for n, prefix in ((10, "few"), (500, "many")):
        ids = _fleet(n, prefix)
        with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
            records.mark_seen(ids, now=NOW)
        counts.append(len(queries))
        assert not Alert.objects.filter(node_id__in=ids, resolved_at__isnull=True).exists()
    assert counts[0] == counts[1]


@pytest.mark.django_db
def test_a_revoked_or_deleted_node_is_not_written():
    revoked = Node.objects.create(name="revoked", status=NodeStatus.REVOKED)
    arrivals.write({revoked.pk: _serving(1), 999_999: _serving(2)})
    assert Node.objects.get(pk=revoked.pk).status == NodeStatus.REVOKED
    assert not NodeRuntime.objects.exists()


@pytest.mark.django_db
def test_what_the_hello_would_rewrite_clears_the_stored_digest(make_node):
    from fleet.agent.protocol import Hello
    from fleet.agents import presence
    from tests.server.test_agent_socket import hello

    away, _ = make_node("away")
    presence.record_hello(away.pk, Hello.model_validate(hello(gpus=1)))
    assert Node.objects.get(pk=away.pk).hello_digest
    Node.objects.filter(pk=away.pk).update(status=NodeStatus.OFFLINE)
    # its GPU moved to another node: its next hello must be stored in full
    taker, _ = make_node("taker")
    presence.record_hello(taker.pk, Hello.model_validate(hello(gpus=1)))
    assert Gpu.objects.get(node=away).state == GpuState.LOST
    assert Node.objects.get(pk=away.pk).hello_digest == ""
    assert Node.objects.get(pk=taker.pk).hello_digest


@pytest.mark.django_db
def test_a_hello_naming_a_model_not_imported_yet_stores_no_digest(make_node):
    from fleet.agent.protocol import Hello
    from fleet.agents import presence
    from tests.server.test_agent_socket import hello

    node, _ = make_node()
    presence.record_hello(node.pk, Hello.model_validate({**hello(), "installed": [{"repo": "x/y", "sha": "b" * 40}]}))
    assert Node.objects.get(pk=node.pk).hello_digest == ""  # a later hello links the row once it is imported
    assert commands.record_inventory(node.pk, [], []) is True


@pytest.mark.django_db
def test_a_site_cache_coming_back_tells_its_site(monkeypatch, django_capture_on_commit_callbacks):
    from fleet.inventory import sites
    from fleet.inventory.models import SiteCache

    cache = Node.objects.create(name="cache", status=NodeStatus.OFFLINE, labels={"site": "lab"})
    neighbour = Node.objects.create(name="neighbour", status=NodeStatus.ONLINE, labels={"site": "lab"})
    Node.objects.create(name="elsewhere", status=NodeStatus.ONLINE, labels={"site": "other"})
    SiteCache.objects.create(site="lab", node=cache, url="http://10.0.0.5:8090")
    told: list[tuple[str, dict]] = []
    monkeypatch.setattr(sites.events, "publish_many", lambda messages: told.extend(messages))
    with django_capture_on_commit_callbacks(execute=True):
        assert arrivals.write({cache.pk: []}) == [cache.pk]
    # the cache itself too: its welcome offered nothing while it was offline
    assert sorted(group for group, message in told if message["type"] == "agent.site") == sorted(
        [f"node.{cache.pk}", f"node.{neighbour.pk}"])

"""The node list's columns (GPU model, load, temperature, labels, active model), sorting, the rows fragment
the open page redraws from, and a query count that does not grow with the rows."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from fleet.agent.protocol import Metrics
from fleet.hub.models import HubModel, InstallState, ModelVersion, NodeInstall
from fleet.inventory.models import Gpu, GpuState, Node, NodeStatus
from fleet.telemetry.live import live_telemetry
from tests.telemetry.conftest import gpu, metrics_frame

pytestmark = pytest.mark.django_db
GIB = 1024**3
SHA = "a" * 40


@pytest.fixture(autouse=True)
def fresh_live_telemetry():
    live_telemetry.reset()
    yield
    live_telemetry.reset()


def _report(node: Node, utils: list[float], temps: list[float], age: float = 0.0) -> None:
    frame = metrics_frame(time.time() - age, [gpu(i, utilization_gpu=u, temperature_c=t)
                                              for i, (u, t) in enumerate(zip(utils, temps, strict=True))])
    live_telemetry.ingest(node.pk, Metrics.model_validate(frame), now=time.time() - age)


def _row(page: str, node: Node) -> str:
    row = page[page.index(f'<tr data-node-id="{node.pk}">'):]
    return row[: row.index("</tr>")]


def _names(response) -> list[str]:
    return [node.name for node in response.context["page"]]


@pytest.fixture
def version() -> ModelVersion:
    model = HubModel.objects.create(repo_id="acme/chat-7b")
    return ModelVersion.objects.create(model=model, revision="v2", sha=SHA)


@pytest.fixture
def nodes(web_node, version) -> dict[str, Node]:
    hot = web_node("hot", gpus=2, status=NodeStatus.ONLINE, labels={"zone": "a", "rack": "r1"})
    cool = web_node("cool", gpus=4, status=NodeStatus.ONLINE)
    gone = web_node("gone", gpus=1, status=NodeStatus.OFFLINE)
    Gpu.objects.create(node=cool, index=9, uuid="GPU-cool-l40", name="NVIDIA L40S", memory_total_bytes=48 * GIB)
    _report(hot, [90.0, 50.0], [81.0, 70.0])
    _report(cool, [10.0, 20.0, 30.0, 40.0, 0.0], [40.0, 41.0, 42.0, 43.0, 44.0])
    _report(gone, [99.0], [95.0])  # offline: its last frame is not current load
    NodeInstall.objects.create(node=hot, repo="acme/chat-7b", sha=SHA, version=version, state=InstallState.ACTIVE)
    NodeInstall.objects.create(node=cool, repo="acme/chat-7b", sha=SHA, version=version, state=InstallState.STAGED)
    return {"hot": hot, "cool": cool, "gone": gone}


def test_columns_show_model_load_temperature_labels_and_active_version(client: Client, charlie, nodes,
                                                                       version) -> None:
    client.force_login(charlie)
    page = client.get(reverse("node-list")).content.decode()
    for label in ("GPU model", "Util avg", "Util max", "Hottest", "Labels", "Active model"):
        assert f">{label}</a></th>" in page
    hot = _row(page, nodes["hot"])
    assert "NVIDIA H100 80GB HBM3" in hot and "70 %" in hot and "90 %" in hot and "81 °C" in hot
    assert "rack=r1" in hot and "zone=a" in hot
    assert f'href="{reverse("hub-version", args=[version.pk])}"' in hot and "v2" in hot
    cool = _row(page, nodes["cool"])
    assert "4× NVIDIA H100 80GB HBM3" in cool and "1× NVIDIA L40S" in cool
    assert "20 %" in cool and "40 %" in cool and "44 °C" in cool
    assert "acme/chat-7b" not in cool  # staged, not active
    gone = _row(page, nodes["gone"])
    assert "99 %" not in gone and "95 °C" not in gone and "no current data" in gone


def test_stale_frames_are_not_current_load(client: Client, charlie, web_node) -> None:
    node = web_node("stale", gpus=1, status=NodeStatus.ONLINE)
    _report(node, [77.0], [66.0], age=3600)
    client.force_login(charlie)
    row = _row(client.get(reverse("node-list")).content.decode(), node)
    assert "77 %" not in row and "no current data" in row


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("", ["cool", "gone", "hot"]),
        ("-name", ["hot", "gone", "cool"]),
        ("-temp", ["hot", "cool", "gone"]),  # unknown (offline) last, whichever direction
        ("temp", ["cool", "hot", "gone"]),
        ("-util_avg", ["hot", "cool", "gone"]),
        ("-gpus", ["cool", "hot", "gone"]),
        ("gpus", ["gone", "hot", "cool"]),
        ("-model", ["hot", "cool", "gone"]),
        ("status", ["cool", "hot", "gone"]),
        ("nonsense", ["cool", "gone", "hot"]),
    ],
)
def test_sorting(client: Client, charlie, nodes, sort, expected) -> None:
    client.force_login(charlie)
    assert _names(client.get(reverse("node-list"), {"sort": sort})) == expected


def test_headers_link_to_sorts_keeping_filters(client: Client, charlie, nodes) -> None:
    client.force_login(charlie)
    page = client.get(reverse("node-list"), {"status": "online", "sort": "-temp", "page": "1"}).content.decode()
    assert 'href="?status=online&amp;sort=temp" aria-sort="descending"' in page  # the other way round
    assert 'href="?status=online&amp;sort=-util_max"' in page  # load sorts the busiest first
    assert 'href="?status=online&amp;sort=name"' in page
    assert 'data-autosubmit' in page and '<input type="hidden" name="sort" value="-temp">' in page


def test_rows_fragment_for_live_redraw(client: Client, charlie, nodes, web_node) -> None:
    client.force_login(charlie)
    fragment = client.get(reverse("node-list"), {"partial": "rows", "status": "online"}).content.decode()
    assert fragment.startswith("<tbody data-node-rows data-count=\"2\">")
    assert "<html" not in fragment and f'data-node-id="{nodes["gone"].pk}"' not in fragment
    new = web_node("new-node", gpus=1)
    fragment = client.get(reverse("node-list"), {"partial": "rows"}).content.decode()
    assert 'data-count="4"' in fragment and f'<tr data-node-id="{new.pk}">' in fragment
    bad = client.get(reverse("node-list"), {"partial": "rows", "kind": "toaster"}).content.decode()
    assert "Fix the filter above" in bad


def _bulk(start: int, count: int, version: ModelVersion) -> None:
    created = Node.objects.bulk_create(
        Node(name=f"bulk-{i:04d}", labels={"zone": "z"}, status=NodeStatus.ONLINE, last_seen=timezone.now())
        for i in range(start, start + count)
    )
    Gpu.objects.bulk_create(Gpu(node=node, index=g, uuid=f"GPU-{node.pk}-{g}", name="H100", memory_total_bytes=GIB,
                                state=GpuState.PRESENT) for node in created for g in range(2))
    NodeInstall.objects.bulk_create(NodeInstall(node=node, repo="acme/chat-7b", sha=SHA, version=version,
                                                state=InstallState.ACTIVE) for node in created)
    for node in created:
        _report(node, [10.0, 20.0], [50.0, 60.0])


@pytest.mark.parametrize("sort", ["name", "-temp", "-model"])
def test_query_count_does_not_grow_with_rows(client: Client, charlie, version, sort,
                                             django_assert_max_num_queries) -> None:
    client.force_login(charlie)
    _bulk(0, 5, version)
    client.get(reverse("node-list"))  # warm up (session, content types)
    with CaptureQueriesContext(connection) as small:
        response = client.get(reverse("node-list"), {"sort": sort})
    assert len(response.context["page"]) == 5
    _bulk(5, 200, version)
    with django_assert_max_num_queries(len(small)):
        response = client.get(reverse("node-list"), {"sort": sort})
    assert len(response.context["page"]) == 50
    assert "60 °C" in response.content.decode() and "acme/chat-7b" in response.content.decode()
    with django_assert_max_num_queries(len(small)):
        client.get(reverse("node-list"), {"sort": sort, "partial": "rows", "label": "zone=z"})


@pytest.mark.services
def test_redis_store_reads_one_page_of_frames(services) -> None:
    """The production store answers the node list's read (latest_of) from the shared copy."""
    import asyncio
    import uuid

    from fleet.telemetry.store import RedisStore

    store = RedisStore(services["redis"], f"test-{uuid.uuid4().hex[:8]}")
    live_telemetry.ingest(7, Metrics.model_validate(metrics_frame(time.time(), [gpu(0, utilization_gpu=33.0)])))
    live_telemetry.ingest(8, Metrics.model_validate(metrics_frame(time.time(), [gpu(0)])))

    async def push() -> None:
        await store.push(live_telemetry)
        await store.aio.aclose()

    asyncio.run(push())
    try:
        frames = store.latest_of([7, 99])
        assert list(frames) == [7] and frames[7]["gpus"][0]["utilization_gpu"] == 33.0
        assert store.latest_of([]) == {}
    finally:
        store.sync.delete(*store.sync.keys(store.prefix + ":*"))

"""Node list (filters, pagination, constant queries), node detail, and the node-states JSON."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from fleet.inventory.models import Gpu, GpuState, Node, NodeKind, NodeStatus

GIB = 1024**3


def _row_names(response) -> list[str]:
    return [node.name for node in response.context["page"]]


@pytest.fixture
def fleet_nodes(web_node) -> dict[str, Node]:
    return {
        "gpu-01": web_node("gpu-01", gpus=8, status=NodeStatus.ONLINE,
                            labels={"zone": "lab-a", "gpu.vendor": "nvidia"}),
        "gpu-02": web_node("gpu-02", gpus=4, status=NodeStatus.OFFLINE, labels={"zone": "lab-b"}),
        "jetson-1": web_node("jetson-1", gpus=1, kind=NodeKind.EDGE_DEVICE, hostname="orin.edge",
                              labels={"zone": "lab-a"}),
        "spare": web_node("spare", hostname="spare.lab"),
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["gpu-01", "gpu-02", "jetson-1", "spare"]),
        ({"kind": "edge_device"}, ["jetson-1"]),
        ({"kind": "gpu_server"}, ["gpu-01", "gpu-02", "spare"]),
        ({"status": "online"}, ["gpu-01"]),
        ({"status": "never_seen"}, ["jetson-1", "spare"]),
        ({"label": "zone=lab-a"}, ["gpu-01", "jetson-1"]),
        ({"label": "gpu.vendor=nvidia"}, ["gpu-01"]),
        ({"label": "zone"}, ["gpu-01", "gpu-02", "jetson-1"]),
        ({"label": "zone=nowhere"}, []),
        ({"q": "ORIN"}, ["jetson-1"]),
        ({"q": "gpu-0"}, ["gpu-01", "gpu-02"]),
        ({"q": "lab", "status": "offline"}, ["gpu-02"]),
        ({"kind": "gpu_server", "label": "zone=lab-a", "status": "online"}, ["gpu-01"]),
    ],
)
def test_node_list_filters(client: Client, charlie, fleet_nodes, query, expected) -> None:
    client.force_login(charlie)
    response = client.get(reverse("node-list"), query)
    assert response.status_code == 200
    assert _row_names(response) == expected
    page = response.content.decode()
    for name in expected:
        node = fleet_nodes[name]
        assert f'<tr data-node-id="{node.pk}">' in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"label": "Bad Key=x"}, "label: &#x27;Bad Key&#x27; is not a valid label key"),
        ({"label": "=x"}, "is not a valid label key"),
        ({"label": "zone="}, "label: the value after"),
        ({"status": "exploded"}, "status: Select a valid choice"),
        ({"kind": "toaster"}, "kind: Select a valid choice"),
    ],
)
def test_bad_filter_gives_message_not_500(client: Client, charlie, fleet_nodes, query, message) -> None:
    client.force_login(charlie)
    response = client.get(reverse("node-list"), query)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'class="message message-error"' in page and message in page
    assert _row_names(response) == []
    assert "Fix the filter above" in page


@pytest.mark.django_db
def test_node_list_row_content(client: Client, charlie, fleet_nodes) -> None:
    node = fleet_nodes["gpu-01"]
    Node.objects.filter(pk=node.pk).update(agent_version="0.3.1", last_seen=timezone.now())
    client.force_login(charlie)
    page = client.get(reverse("node-list")).content.decode()
    row = page[page.index(f'<tr data-node-id="{node.pk}">'):]
    row = row[: row.index("</tr>")]
    assert '<span class="badge badge-green" data-node-status data-status="online">Online</span>' in row
    assert "640.0 GiB" in row and "0.3.1" in row and "gpu-01.lab" in row and "GPU server" in row
    assert re.search(r"<td class=\"num\" data-node-gpu-count>8</td>", row)
    assert "data-node-last-seen" in row and "just now" in row
    assert 'data-live-topics="fleet"' in page


@pytest.mark.django_db
def test_node_list_paginates_50_per_page(client: Client, charlie, web_node) -> None:
    Node.objects.bulk_create(Node(name=f"n{i:03d}") for i in range(120))
    client.force_login(charlie)
    first = client.get(reverse("node-list"))
    assert len(first.context["page"]) == 50 and first.context["page"].paginator.num_pages == 3
    last = client.get(reverse("node-list"), {"page": 3, "q": "n"})
    assert _row_names(last) == [f"n{i:03d}" for i in range(100, 120)]
    assert 'href="?page=2&amp;q=n"' in last.content.decode()
    assert client.get(reverse("node-list"), {"page": "zzz"}).status_code == 200


def _bulk_nodes(start: int, count: int) -> None:
    nodes = Node.objects.bulk_create(
        Node(name=f"bulk-{i:04d}", hostname=f"bulk-{i}.lab", labels={"zone": "z"},
             status=NodeStatus.ONLINE if i % 2 else NodeStatus.OFFLINE, last_seen=timezone.now())
        for i in range(start, start + count)
    )
    Gpu.objects.bulk_create(
        Gpu(node=node, index=g, uuid=f"GPU-{node.pk}-{g}", name="H100", memory_total_bytes=80 * GIB,
            state=GpuState.LOST if g == 3 else GpuState.PRESENT)
        for node in nodes for g in range(4)
    )


@pytest.mark.django_db
def test_node_list_runs_constant_queries(client: Client, charlie, django_assert_max_num_queries) -> None:
    client.force_login(charlie)
    _bulk_nodes(0, 10)
    client.get(reverse("node-list"))  # warm up (session, content types)
    with CaptureQueriesContext(connection) as small:
        response = client.get(reverse("node-list"))
    assert len(response.context["page"]) == 10
    _bulk_nodes(10, 490)
    with CaptureQueriesContext(connection) as large:
        response = client.get(reverse("node-list"))
    assert len(response.context["page"]) == 50
    assert response.context["page"][0].gpu_count == 3  # the lost GPU is not counted
    assert len(small) == len(large)
    with django_assert_max_num_queries(len(small)):
        client.get(reverse("node-list"), {"label": "zone=z", "status": "online", "q": "bulk"})
    # session, user, count, the page of nodes, their GPUs, their active models, the nav's playground check,
    # the top bar's alert count
    with django_assert_max_num_queries(8):
        client.get(reverse("node-list"))


@pytest.mark.django_db
def test_node_detail_shows_facts_and_lost_gpu(client: Client, charlie, web_node) -> None:
    node = web_node("gpu-07", gpus=2, os="Ubuntu 24.04", arch="x86_64", cpu_count=96,
                     memory_bytes=1024 * GIB, disk_bytes=4 * 1024 * GIB, agent_version="0.3.1",
                     labels={"zone": "lab-a"}, status=NodeStatus.ONLINE)
    lost = Gpu.objects.filter(node=node, index=1).get()
    lost.state = GpuState.LOST
    lost.save()
    client.force_login(charlie)
    response = client.get(reverse("node-detail", args=[node.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Ubuntu 24.04" in page and "x86_64" in page and "96" in page
    assert "1.0 TiB" in page and "4.0 TiB" in page and "0.3.1" in page
    assert f'href="{reverse("node-list")}?label=zone%3Dlab-a"' in page
    row = page[page.index('data-gpu-state="lost"'):]
    row = row[: row.index("</tr>")]
    assert lost.uuid in row and '<span class="badge badge-red">Lost</span>' in row
    assert '<tr class="gpu-present" data-gpu-state="present">' in page
    assert f'data-live-topics="node:{node.pk}"' in page
    assert '<span class="badge badge-green" data-node-status data-status="online">Online</span>' in page


@pytest.mark.django_db
def test_node_detail_without_gpus_shows_note(client: Client, charlie, web_node) -> None:
    node = web_node("edge-3", kind=NodeKind.EDGE_DEVICE, gpu_note="NVML not found: no NVIDIA driver")
    client.force_login(charlie)
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    assert "No GPUs reported" in page and "NVML not found: no NVIDIA driver" in page


@pytest.mark.django_db
def test_node_detail_404(client: Client, charlie) -> None:
    client.force_login(charlie)
    assert client.get(reverse("node-detail", args=[999])).status_code == 404


@pytest.mark.django_db
def test_node_states_json(client: Client, charlie, fleet_nodes, django_assert_max_num_queries) -> None:
    client.force_login(charlie)
    ids = [fleet_nodes["gpu-01"].pk, fleet_nodes["gpu-02"].pk]
    with django_assert_max_num_queries(3):
        response = client.get(reverse("node-states"), {"ids": ",".join(map(str, ids))})
    assert response.status_code == 200
    nodes = {node["id"]: node for node in response.json()["nodes"]}
    assert nodes[ids[0]]["status"] == "online" and nodes[ids[0]]["status_colour"] == "green"
    assert nodes[ids[0]]["gpu_count"] == 8
    assert nodes[ids[1]]["status_label"] == "Offline"
    assert client.get(reverse("node-states"), {"ids": "1,x"}).status_code == 400
    too_many = ",".join(str(i) for i in range(300))
    assert client.get(reverse("node-states"), {"ids": too_many}).status_code == 400
    assert client.get(reverse("node-states")).json() == {"nodes": []}

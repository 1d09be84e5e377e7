"""Runtime state on the server: replaced from hello/runtime reports, pushed live, shown on the node
page (last known when the node is offline), and the /playground/targets/ listing and routing."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.test import Client
from django.urls import reverse

from fleet import events
from fleet.agent.protocol import Hello, RuntimeStatus
from fleet.agents.presence import record_hello
from fleet.hub.models import HubModel, ModelVersion
from fleet.inventory.models import NodeRuntime, NodeStatus
from fleet.inventory.runtimes import replace_runtimes
from fleet.inventory.services import set_status
from fleet.playground import targets
from tests.playground.fakeagent import REPO, SHA, hello, runtime


def status(**fields) -> RuntimeStatus:
    return RuntimeStatus.model_validate(runtime(**fields))


@pytest.mark.django_db
def test_hello_serving_replaces_the_rows(make_node):
    node, _ = make_node("gpu-01")
    record_hello(node.pk, Hello.model_validate(hello([runtime(), runtime(repo="org/other", state="starting")])))
    assert sorted(NodeRuntime.objects.values_list("repo", "state")) == [(REPO, "ready"), ("org/other", "starting")]
    record_hello(node.pk, Hello.model_validate(hello([runtime(state="failed", reason="OOM")])))
    assert list(NodeRuntime.objects.values_list("repo", "state", "reason")) == [(REPO, "failed", "OOM")]


@pytest.mark.django_db(transaction=True)
async def test_runtime_report_is_pushed_to_the_node_page_group(make_node):
    node, _ = await database_sync_to_async(make_node)("gpu-01")
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.node_live_group(node.pk), channel)
    await database_sync_to_async(replace_runtimes)(node.pk, [status(tokens_served=42, log_tail=["loaded"])])
    message = await layer.receive(channel)
    payload = message["payload"]
    assert payload["kind"] == "runtimes" and payload["node_id"] == node.pk
    assert payload["runtimes"][0] | {"updated_at": None} == {
        "repo": REPO, "sha": SHA, "runtime": "builtin", "state": "ready", "state_label": "Ready",
        "state_colour": "green", "reason": "", "port": 18080, "tokens_served": 42, "requests_active": 0,
        "restarts": 0, "log_tail": ["loaded"], "updated_at": None}


@pytest.mark.django_db
def test_node_page_shows_each_runtime_and_says_when_it_is_only_last_known(make_node, charlie):
    node, _ = make_node("gpu-01")
    hub = HubModel.objects.create(repo_id=REPO)
    ModelVersion.objects.create(model=hub, revision="v1", sha=SHA)
    replace_runtimes(node.pk, [status(tokens_served=1234, log_tail=["<script>x</script>", "ready on 18080"]),
                               status(repo="org/broken", state="failed", reason="CUDA out of memory", port=None)])
    set_status(node.pk, NodeStatus.ONLINE)
    client = Client()
    client.force_login(charlie)
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    assert f'data-runtime="{REPO}"' in page and "aaaaaaaaaaaa · v1" in page and ">1234<" in page
    assert "badge-green" in page and "badge-red" in page and "Failed: CUDA out of memory" in page
    assert "<details class=\"runtime-log\"><summary>Log tail (2 lines)</summary>" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page
    assert 'data-node-status-value="online"' in page

    set_status(node.pk, NodeStatus.OFFLINE)
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    assert 'data-node-status-value="offline"' in page and "last known state" in page


@pytest.mark.django_db
def test_targets_listing_and_permission(make_node, bob, charlie, outsider):
    ready, _ = make_node("gpu-01")
    busy, _ = make_node("gpu-02")
    broken, _ = make_node("gpu-03")
    gone, _ = make_node("gpu-04")
    replace_runtimes(ready.pk, [status()])
    replace_runtimes(busy.pk, [status(requests_active=3)])
    replace_runtimes(broken.pk, [status(state="failed", reason="OOM")])
    replace_runtimes(gone.pk, [status(sha="b" * 40)])
    for node in (ready, busy, broken):
        set_status(node.pk, NodeStatus.ONLINE)
    set_status(gone.pk, NodeStatus.OFFLINE)

    assert [t.node_name for t in targets.candidates(REPO)] == ["gpu-01", "gpu-02"]  # least busy first
    targets.inflight[ready.pk] += 5  # this process's own chats count too
    try:
        assert [t.node_name for t in targets.candidates(REPO)] == ["gpu-02", "gpu-01"]
    finally:
        del targets.inflight[ready.pk]
    with pytest.raises(targets.NoTarget, match="no online node is serving"):
        targets.candidates(REPO, sha="b" * 40)  # only on the offline node

    client = Client()
    client.force_login(bob)
    listing = client.get(reverse("playground:targets")).json()
    assert listing["models"] == [{"model": REPO, "ready_nodes": 2,
                                  "versions": [{"sha": SHA, "revision": None, "ready_nodes": 2}]}]
    by_name = {n["name"]: n for n in listing["nodes"]}
    assert by_name["gpu-03"]["runtimes"][0]["state"] == "failed" and by_name["gpu-04"]["status"] == "offline"

    for user, code in ((charlie, 403), (outsider, 403)):
        client.force_login(user)
        assert client.get(reverse("playground:targets")).status_code == code
    assert Client().get(reverse("playground:targets")).status_code == 302

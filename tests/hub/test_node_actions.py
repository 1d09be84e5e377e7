"""Actions only where they can work: Deploy here / Activate / Remove disabled (with the reason) and refused on
offline and revoked nodes; the version page's node picker shows each node's status; its Nodes box offers
Activate for nodes holding the version staged and follows running commands (the fragment the page redraws)."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from fleet.hub.importer import import_folder
from fleet.hub.models import CommandKind, CommandState, InstallState, ModelVersion, NodeCommand, NodeInstall
from fleet.inventory.models import NodeStatus
from tests.hub.conftest import sample_files, write_folder

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(tmp_path, hub_root) -> ModelVersion:
    version, _ = import_folder("test", write_folder(tmp_path / "src", sample_files(weights_mib=1)), "acme/tiny", "v1")
    return version


def _button(page: str, label: str) -> str:
    match = re.search(r"<button[^>]*>" + label + "</button>", page)
    assert match, label
    return match.group(0)


@pytest.mark.parametrize(("status", "reason"), [(NodeStatus.OFFLINE, "is offline: its agent must reconnect first"),
                                                (NodeStatus.REVOKED, "is revoked: it can no longer receive")])
def test_unreachable_node_page_disables_and_refuses(client: Client, bob, version, make_node, status, reason) -> None:
    node, _ = make_node("gpu-01", status=status)
    NodeInstall.objects.create(node=node, repo="acme/tiny", sha=version.sha, version=version)
    client.force_login(bob)
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    for label in ("Deploy here", "Activate", "Remove"):
        button = _button(page, label)
        assert "disabled" in button and reason in button
    assert f'<span class="reason" data-unreachable="{node.pk}">gpu-01 {reason}' in page
    response = client.post(reverse("hub-deploy"), {"node": node.pk, "version": version.pk,
                                                   "next": reverse("node-detail", args=[node.pk])}, follow=True)
    text = response.content.decode()
    assert reason in text or "Select a valid choice" in text  # a revoked node is not even a choice
    response = client.post(reverse("hub-node-command", args=[node.pk, "activate"]), {"version": version.pk},
                           follow=True)
    assert reason in response.content.decode()
    assert not NodeCommand.objects.exists()


def test_reachable_node_page_enables_actions(client: Client, bob, version, make_node) -> None:
    node, _ = make_node("gpu-01", status=NodeStatus.ONLINE)
    NodeInstall.objects.create(node=node, repo="acme/tiny", sha=version.sha, version=version)
    client.force_login(bob)
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    for label in ("Deploy here", "Activate", "Remove"):
        assert "disabled" not in _button(page, label)
    assert f'<span class="reason" data-unreachable="{node.pk}"></span>' in page
    assert 'data-confirm="Remove acme/tiny@' in page  # destructive: the styled dialog asks first


def test_version_picker_shows_status_and_disables_offline(client: Client, bob, version, make_node) -> None:
    online, _ = make_node("gpu-01", status=NodeStatus.ONLINE)
    offline, _ = make_node("gpu-02", status=NodeStatus.OFFLINE)
    make_node("gpu-03", status=NodeStatus.REVOKED)
    client.force_login(bob)
    page = client.get(reverse("hub-version", args=[version.pk])).content.decode()
    assert re.search(rf'<option value="{online.pk}" data-status="online">gpu-01 · Online</option>', page)
    assert re.search(rf'<option value="{offline.pk}" data-status="offline" disabled title="gpu-02 is offline[^"]*">'
                     r"gpu-02 · Offline \(must reconnect first\)</option>", page)
    assert "gpu-03" not in page


def test_nodes_box_offers_activate_and_follows_commands(client: Client, bob, charlie, version, make_node,
                                                        django_assert_max_num_queries) -> None:
    staged, _ = make_node("gpu-01", status=NodeStatus.ONLINE)
    away, _ = make_node("gpu-02", status=NodeStatus.OFFLINE)
    active, _ = make_node("gpu-03", status=NodeStatus.ONLINE)
    pulling, _ = make_node("gpu-04", status=NodeStatus.ONLINE)
    for node, state in ((staged, InstallState.STAGED), (away, InstallState.STAGED), (active, InstallState.ACTIVE)):
        NodeInstall.objects.create(node=node, repo="acme/tiny", sha=version.sha, version=version, state=state)
    NodeCommand.objects.create(command_id="cmd-pull", node=pulling, kind=CommandKind.DEPLOY, version=version,
                               repo="acme/tiny", sha=version.sha, state=CommandState.DOWNLOADING,
                               bytes_done=version.total_size // 2, bytes_total=version.total_size)
    url = reverse("hub-version-nodes", args=[version.pk])
    client.force_login(bob)
    page = client.get(reverse("hub-version", args=[version.pk])).content.decode()
    assert f'data-version-nodes="{url}"' in page
    with django_assert_max_num_queries(6):
        box = client.get(url).content.decode()
    assert box.startswith(f'<div data-version-nodes="{url}" data-holding="3">') and "<html" not in box

    def item(node) -> str:
        part = box[box.index(f'<li data-node-id="{node.pk}">'):]
        return part[: part.index("</li>")]

    assert "Online" in item(staged) and "Staged" in item(staged)
    assert "disabled" not in _button(item(staged), "Activate")
    assert "Offline" in item(away) and "disabled" in _button(item(away), "Activate")
    assert "gpu-02 is offline" in item(away)
    assert "Active" in item(active) and "Activate</button>" not in item(active)
    assert "Deploy: downloading 50 %" in item(pulling) and "Activate</button>" not in item(pulling)

    # Activate from the box: the command runs, the box says so and offers no second Activate.
    client.post(reverse("hub-node-command", args=[staged.pk, "activate"]), {"version": version.pk})
    box = client.get(url).content.decode()
    assert "Activate: pending" in item(staged) and "Activate</button>" not in item(staged)
    # The agent reports it active: the box follows.
    NodeCommand.objects.filter(kind=CommandKind.ACTIVATE).update(state=CommandState.ACTIVE,
                                                                 finished_at="2026-01-01T00:00Z")
    NodeInstall.objects.filter(node=staged).update(state=InstallState.ACTIVE)
    box = client.get(url).content.decode()
    assert 'data-install-state="active"' in item(staged) and "Activate: " not in item(staged)
    client.force_login(charlie)  # viewers see the box without actions
    box = client.get(url).content.decode()
    assert "Activate</button>" not in box and "gpu-01" in box

"""The model pages: roles, the add form's preview and its clear messages, the token never rendered,
constant query counts, node page actions writing commands and audit rows."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from fleet.accounts.models import AuditEvent
from fleet.hub import commands
from fleet.hub.importer import import_folder
from fleet.hub.models import ApprovalState, CommandKind, InstallState, ModelVersion, NodeCommand, NodeInstall
from tests.hub.conftest import sample_files, write_folder

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(tmp_path, hub_root) -> ModelVersion:
    version, _ = import_folder("test", write_folder(tmp_path / "src", sample_files(weights_mib=1)), "acme/tiny", "v1")
    return version


def _add(client: Client, **data) -> str:
    body = {"repo": "acme/tiny", "revision": "main", "token": "", "allow_patterns": "", "action": "preview", **data}
    response = client.post(reverse("hub-add"), body)
    assert response.status_code in (200, 302)
    return response.content.decode()


def test_roles(client: Client, charlie, bob, outsider, version) -> None:
    pages = [reverse("hub-models"), reverse("hub-version", args=[version.pk]), reverse("hub-progress")]
    for url in [*pages, reverse("hub-add")]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), url
    client.force_login(outsider)
    assert all(client.get(url).status_code == 403 for url in pages)
    client.force_login(charlie)
    assert all(client.get(url).status_code == 200 for url in pages)
    assert client.get(reverse("hub-add")).status_code == 403
    assert client.post(reverse("hub-version-action", args=[version.pk, "delete"])).status_code == 403
    assert ModelVersion.objects.filter(pk=version.pk).exists()
    client.force_login(bob)
    assert client.get(reverse("hub-add")).status_code == 200
    response = client.post(reverse("hub-version-action", args=[version.pk, "approve"]), follow=True)
    assert b"needs the admin role" in response.content


def test_models_page_lists_versions_with_progress_and_nodes(client: Client, charlie, version, make_node, tmp_path,
                                                           django_assert_max_num_queries) -> None:
    node, _ = make_node("gpu-01")
    NodeInstall.objects.create(node=node, repo="acme/tiny", sha=version.sha, version=version,
                               state=InstallState.ACTIVE)
    client.force_login(charlie)
    page = client.get(reverse("hub-models")).content.decode()
    assert "acme/tiny" in page and version.sha[:12] in page and "gpu-01" in page and "Synced" in page
    assert f'data-version-progress="{version.pk}"' in page and "Add model" not in page
    for i in range(5):  # more versions and nodes: still the same number of queries
        folder = write_folder(tmp_path / f"m{i}", sample_files(weights_mib=1, seed=b"x"))
        v, _ = import_folder("test", folder, f"acme/m{i}", "v1")
        other, _ = make_node(f"n{i}")
        NodeInstall.objects.create(node=other, repo=f"acme/m{i}", sha=v.sha, version=v)
    with django_assert_max_num_queries(9):
        assert client.get(reverse("hub-models")).status_code == 200


def test_add_previews_then_confirms_and_never_renders_the_token(client: Client, bob, fake_hub, hub_root) -> None:
    sha = fake_hub.add("acme/gated", sample_files(), gated=True, token="hf_secret_token_123")
    client.force_login(bob)
    page = _add(client, repo="acme/gated", token="hf_secret_token_123")
    assert sha in page and "model.safetensors" in page and "3.0 MiB" in page and "pytorch_model.bin" in page
    assert "hf_secret_token_123" not in page and not ModelVersion.objects.exists()
    preview_id = client.session["hub_preview"]["id"]
    response = client.post(reverse("hub-add"), {"repo": "acme/gated", "revision": "main", "token": "",
                                                "allow_patterns": "", "action": "confirm", "expect_sha": sha,
                                                "preview_id": preview_id}, follow=True)
    version = ModelVersion.objects.get(sha=sha)
    assert response.redirect_chain[-1][0] == reverse("hub-version", args=[version.pk])
    assert "hf_secret_token_123" not in response.content.decode()
    assert version.model.has_token and "stored (encrypted)" in response.content.decode()
    assert AuditEvent.objects.filter(action="model_version.create", actor=bob).exists()


@pytest.mark.parametrize(("data", "message"), [
    ({"repo": "acme/nope"}, "repository acme/nope was not found on"),
    ({"revision": "v404"}, "revision &#x27;v404&#x27; was not found in acme/tiny"),
    ({"repo": "acme/gated"}, "acme/gated is a gated repository"),
    ({"repo": "not a repo"}, "give the repository as ORG/NAME"),
])
def test_add_form_messages(client: Client, bob, fake_hub, hub_root, data, message) -> None:
    fake_hub.add("acme/tiny", sample_files())
    fake_hub.add("acme/gated", sample_files(), gated=True, token="hf_x")
    client.force_login(bob)
    page = _add(client, **data)
    assert message in page, page[page.find("form-errors") - 200:][:2000]
    assert not ModelVersion.objects.exists()


def test_add_form_offline_message(client: Client, bob, hub_root, settings) -> None:
    settings.FLEET_HF_OFFLINE = True
    client.force_login(bob)
    page = _add(client)
    assert "Fleet is offline (FLEET_HF_OFFLINE=1)" in page and "importmodel" in page


def test_add_form_unreachable_message(client: Client, bob, hub_root, settings) -> None:
    settings.FLEET_HF_OFFLINE = False
    settings.FLEET_HF_UPSTREAM = "http://127.0.0.1:9"
    client.force_login(bob)
    assert "cannot reach the upstream hub at http://127.0.0.1:9" in _add(client)


def test_node_page_deploy_here_and_activate(client: Client, bob, charlie, version, make_node) -> None:
    node, _ = make_node("gpu-01")
    client.force_login(charlie)
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    assert "No model versions reported" in page and "Deploy here" not in page
    client.force_login(bob)
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    assert "Deploy here" in page and f"acme/tiny · v1 · {version.sha[:12]}" in page
    response = client.post(reverse("hub-deploy"), {"node": node.pk, "version": version.pk, "activate": "on",
                                                   "next": reverse("node-detail", args=[node.pk])}, follow=True)
    assert "Deploying acme/tiny@" in response.content.decode()
    command = NodeCommand.objects.get()
    assert command.kind == CommandKind.DEPLOY and command.activate and command.bytes_total == version.total_size
    frame = commands.frame_for(command)
    assert frame.sha == version.sha and {e["path"] for e in frame.manifest} == set(sample_files())
    assert AuditEvent.objects.filter(action="model.deploy", actor=bob).exists()
    again = client.post(reverse("hub-deploy"), {"node": node.pk, "version": version.pk}, follow=True)
    assert "already in progress" in again.content.decode()

    response = client.post(reverse("hub-node-command", args=[node.pk, "activate"]), {"version": version.pk},
                           follow=True)
    assert "is not staged on gpu-01" in response.content.decode()
    NodeInstall.objects.create(node=node, repo="acme/tiny", sha=version.sha, version=version)
    client.post(reverse("hub-node-command", args=[node.pk, "activate"]), {"version": version.pk})
    assert NodeCommand.objects.filter(kind=CommandKind.ACTIVATE).count() == 1
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    assert "Activate" in page and 'data-command-progress=' in page
    # the node's pull rate, next to its progress, on the version page and in the progress feed
    NodeCommand.objects.filter(pk=command.pk).update(state="downloading", bytes_done=1024,
                                                    bytes_per_second=5 * 1024**2)
    page = client.get(reverse("hub-version", args=[version.pk])).content.decode()
    assert "1.0 KiB / " in page and "5.0 MiB/s" in page
    feed = client.get(reverse("hub-progress"), {"commands": str(command.pk)}).json()
    assert feed["commands"][str(command.pk)]["rate"] == 5 * 1024**2


def test_unapproved_versions_cannot_be_deployed(client: Client, bob, alice, version, make_node) -> None:
    node, _ = make_node("gpu-01")
    ModelVersion.objects.filter(pk=version.pk).update(approval=ApprovalState.PENDING)
    client.force_login(bob)
    response = client.post(reverse("hub-deploy"), {"node": node.pk, "version": version.pk}, follow=True)
    assert "version: Select a valid choice" in response.content.decode()
    client.force_login(alice)
    client.post(reverse("hub-version-action", args=[version.pk, "approve"]))
    assert ModelVersion.objects.get(pk=version.pk).approval == ApprovalState.APPROVED
    assert AuditEvent.objects.filter(action="model_version.approve", actor=alice).exists()


def test_delete_is_refused_while_active_somewhere(client: Client, bob, version, make_node, hub_root) -> None:
    from fleet.hub import store

    node, _ = make_node("gpu-01")
    install = NodeInstall.objects.create(node=node, repo="acme/tiny", sha=version.sha, version=version,
                                         state=InstallState.ACTIVE)
    client.force_login(bob)
    response = client.post(reverse("hub-version-action", args=[version.pk, "delete"]), follow=True)
    assert "is active on gpu-01" in response.content.decode()
    install.delete()
    digests = [f.blob.digest for f in version.files.all()]
    response = client.post(reverse("hub-version-action", args=[version.pk, "delete"]), follow=True)
    assert "Deleted acme/tiny@" in response.content.decode()
    assert not ModelVersion.objects.exists() and not any(store.blob_path(d).exists() for d in digests)


def test_progress_json(client: Client, charlie, version) -> None:
    client.force_login(charlie)
    data = client.get(reverse("hub-progress"), {"versions": str(version.pk)}).json()
    assert data["versions"][str(version.pk)]["state"] == "synced"
    assert data["versions"][str(version.pk)]["done"] == version.total_size
    assert client.get(reverse("hub-progress"), {"versions": "x"}).status_code == 400


def test_required_approval(client: Client, bob, alice, fake_hub, hub_root, settings) -> None:
    from fleet.hub import sync

    settings.FLEET_REQUIRE_APPROVAL = True
    sha = fake_hub.add("acme/tiny", sample_files())
    client.force_login(bob)
    _add(client)
    response = client.post(reverse("hub-add"), {"repo": "acme/tiny", "revision": "main", "token": "",
                                                "allow_patterns": "", "action": "confirm", "expect_sha": sha,
                                                "preview_id": client.session["hub_preview"]["id"]}, follow=True)
    assert "an admin must approve it" in response.content.decode()
    version = ModelVersion.objects.get(sha=sha)
    assert version.approval == ApprovalState.PENDING and version.approved_at is None
    assert sync.wanted_blobs() == []  # nothing is fetched before approval
    page = client.get(reverse("hub-version", args=[version.pk])).content.decode()
    assert "Awaiting approval" in page and ">Approve<" not in page  # operators cannot approve
    client.force_login(alice)
    assert ">Approve<" in client.get(reverse("hub-version", args=[version.pk])).content.decode()
    client.post(reverse("hub-version-action", args=[version.pk, "approve"]))
    assert ModelVersion.objects.get(pk=version.pk).approval == ApprovalState.APPROVED
    assert len(sync.wanted_blobs()) == 3

"""Deployment and rollout pages through Django's client: who sees and does what, the preview's waves and
download sizes, the live page's markup, and query counts that stay flat as targets grow."""

from __future__ import annotations

import pytest
from django.test import Client

from fleet.accounts.models import AuditEvent
from fleet.hub.models import Blob, HubModel, InstallState, ModelVersion, NodeInstall, VersionFile
from fleet.inventory.models import NodeStatus
from fleet.rollouts import driver, services
from fleet.rollouts.models import Deployment, Rollout
from tests.rollouts.test_services import agents_answer

SOAK_ONLY = {"healthcheck": None, "min_ready_seconds": 5}


@pytest.fixture(autouse=True)
def _fresh_driver(monkeypatch):
    monkeypatch.setattr(driver, "_restarted", True)


def _file(version: ModelVersion, path: str, blob: Blob) -> None:
    VersionFile.objects.create(version=version, path=path, size=blob.size, oid=path[:1] * 40, blob=blob)


@pytest.fixture
def setup(db, make_node, alice):
    model = HubModel.objects.create(repo_id="acme/tiny")
    v1 = ModelVersion.objects.create(model=model, revision="v1", sha="a" * 40)
    v2 = ModelVersion.objects.create(model=model, revision="v2", sha="b" * 40)
    shared = Blob.objects.create(digest="1" * 64, size=1000)
    old = Blob.objects.create(digest="2" * 64, size=2000)
    new = Blob.objects.create(digest="3" * 64, size=5000)
    _file(v1, "config.json", shared)
    _file(v1, "model.safetensors", old)
    _file(v2, "config.json", shared)
    _file(v2, "model.safetensors", new)

    def add_nodes(count: int, start: int = 1) -> None:
        for index in range(start, start + count):
            node, _ = make_node(f"gpu-{index:02d}", labels={"role": "chat"}, status=NodeStatus.ONLINE)
            NodeInstall.objects.create(node=node, repo="acme/tiny", sha=v1.sha, version=v1, state=InstallState.ACTIVE)

    add_nodes(2)
    make_node("gpu-99", labels={"role": "chat"}, status=NodeStatus.ONLINE)  # holds nothing yet
    deployment = services.create_deployment(alice, "chat-default", "acme/tiny", "v1", selector={"role": "chat"})
    return deployment, v2, add_nodes


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_pages_need_a_role_and_actions_need_an_operator(setup, charlie, outsider) -> None:
    deployment, _, _ = setup
    rollout = services.create_rollout("engine", deployment, "v2", SOAK_ONLY)
    pages = ["/deployments/", "/deployments/chat-default/", f"/rollouts/{rollout.pk}/"]
    for url in pages + ["/deployments/chat-default/rollouts/new/"]:
        assert Client().get(url).status_code == 302
        assert login(outsider).get(url).status_code == 403
    viewer = login(charlie)
    for url in pages:
        response = viewer.get(url)
        assert response.status_code == 200
        assert b"Roll back" not in response.content and b"New rollout" not in response.content
    assert viewer.get("/deployments/chat-default/rollouts/new/").status_code == 403
    assert viewer.post(f"/rollouts/{rollout.pk}/abort/").status_code == 403
    assert viewer.get("/deployments/nope/").status_code == 404
    rollout.refresh_from_db()
    assert rollout.state == "progressing"
    assert b'href="/deployments/"' in viewer.get("/").content  # the nav link


def test_the_deployment_page_shows_desired_against_actual_per_node(setup, charlie) -> None:
    page = login(charlie).get("/deployments/chat-default/").content.decode()
    assert "2 of 3 on v1" in page
    assert "gpu-99" in page and "nothing reported" in page


def test_the_preview_shows_waves_and_only_the_bytes_each_node_lacks(setup, bob) -> None:
    deployment, v2, _ = setup
    client = login(bob)
    form = client.get("/deployments/chat-default/rollouts/new/").content.decode()
    assert 'value="25%"' in form and 'value="Reply with the word ready."' in form  # defaults filled in
    body = {"version": v2.pk, "canary": "1", "batch": "2", "max_unavailable": "1", "min_ready_seconds": "5",
            "canary_failure_budget": "0", "failure_budget_percent": "10", "auto_rollback": "on",
            "progress_deadline_seconds": "600", "offline_grace_seconds": "120", "order_by": "zone",
            "check": "on", "check_prompt": "Say ready", "check_expect": "ready", "check_timeout": "30"}
    page = client.post("/deployments/chat-default/rollouts/new/", {**body, "action": "preview"}).content.decode()
    assert "Canary" in page and "Wave 2" in page
    assert 'data-plan-node="gpu-01">gpu-01 · downloads 4.9 KiB' in page  # the new weights only
    assert 'data-plan-node="gpu-99">gpu-99 · downloads 5.9 KiB' in page  # everything
    assert not Rollout.objects.exists()

    bad = client.post("/deployments/chat-default/rollouts/new/", {**body, "batch": "0", "action": "start"})
    assert bad.status_code == 200 and b"batch:" in bad.content and not Rollout.objects.exists()

    started = client.post("/deployments/chat-default/rollouts/new/", {**body, "action": "start"})
    rollout = Rollout.objects.get()
    assert started.status_code == 302 and started["Location"] == f"/rollouts/{rollout.pk}/"
    assert rollout.strategy["healthcheck"] == {"prompt": "Say ready", "expect": "ready", "timeout_seconds": 30.0}
    assert AuditEvent.objects.filter(action="rollout.create", actor=bob).exists()


def test_the_rollout_page_has_the_grid_the_buttons_and_the_compare_link_during_the_canary(setup, bob) -> None:
    deployment, _, _ = setup
    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    client = login(bob)
    page = client.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert 'data-live="1"' in page and 'data-target="gpu-01"' in page and "rollouts.js" in page
    assert "data-compare hidden>Compare stable and canary" in page  # no canary serves the new version yet
    for _ in range(3):
        agents_answer()
        driver.tick()
    page = client.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert f"/playground/?compare=1&amp;a=acme/tiny@{'a' * 40}&amp;b=acme/tiny@{'b' * 40}\" data-compare>" in page

    response = client.post(f"/rollouts/{rollout.pk}/pause/", {"reason": "looking"}, follow=True)
    rollout.refresh_from_db()
    assert rollout.state == "paused" and b"Resume" in response.content
    assert AuditEvent.objects.filter(action="rollout.pause", actor=bob).exists()
    response = client.post(f"/rollouts/{rollout.pk}/retry/", {"node": "gpu-01"}, follow=True)
    assert b"retry:" in response.content  # refused, said why
    assert client.post(f"/rollouts/{rollout.pk}/explode/").status_code == 404


def test_page_queries_stay_flat_as_targets_grow(setup, charlie, django_assert_max_num_queries) -> None:
    deployment, _, add_nodes = setup
    client = login(charlie)
    first = services.create_rollout("engine", deployment, "v2", SOAK_ONLY)
    counts = {}
    for round_, grow in enumerate((0, 12)):
        add_nodes(grow, start=10)
        rollout = first if not round_ else services.create_rollout("engine", deployment, "v2", SOAK_ONLY)
        with django_assert_max_num_queries(30) as captured:
            client.get(f"/rollouts/{rollout.pk}/")
            client.get("/deployments/")
            client.get("/deployments/chat-default/")
        counts[round_] = len(captured.captured_queries)
    assert counts[0] == counts[1], counts


def test_operators_create_deployments_from_the_page(setup, bob, charlie) -> None:
    assert login(charlie).get("/deployments/new/").status_code == 403
    client = login(bob)
    assert b"New deployment" in client.get("/deployments/").content
    bad = client.post("/deployments/new/", {"name": "edge", "repo": "acme/tiny", "version": "v9",
                                            "selector": "role=edge", "runtime": "builtin"})
    assert bad.status_code == 200 and b"has no version v9" in bad.content
    bad = client.post("/deployments/new/", {"name": "edge", "repo": "acme/tiny", "version": "v1",
                                            "selector": "role", "runtime": "builtin"})
    assert b"write labels as key=value" in bad.content
    response = client.post("/deployments/new/", {"name": "edge", "repo": "acme/tiny", "version": "v1",
                                                 "selector": "role=chat, zone=a", "nodes": ["gpu-99"],
                                                 "runtime": "llamacpp"})
    assert response.status_code == 302 and response["Location"] == "/deployments/edge/"
    edge = Deployment.objects.get(name="edge")
    assert edge.selector == {"role": "chat", "zone": "a"} and [n.name for n in edge.nodes.all()] == ["gpu-99"]
    assert AuditEvent.objects.filter(action="deployment.create", actor=bob).exists()


def test_the_node_page_shows_its_deployments_desired_against_actual(setup, charlie) -> None:
    deployment, _, _ = setup
    rollout = services.create_rollout("engine", deployment, "v2", SOAK_ONLY)
    node = deployment.nodes.model.objects.get(name="gpu-99")
    page = login(charlie).get(f"/nodes/{node.pk}/").content.decode()
    assert 'href="/deployments/chat-default/"' in page and "nothing reported" in page
    assert f"#{rollout.pk} → v2" in page
    other = deployment.nodes.model.objects.create(name="cpu-01", hostname="cpu-01.lan", labels={"role": "batch"})
    assert "chat-default" not in login(charlie).get(f"/nodes/{other.pk}/").content.decode()

"""The rollouts JSON API as a pipeline and a browser use it: sessions (CSRF on changes) or a `rollouts`
API key; viewers read, operators act; refusals name the field; every change audited; the schema served."""

from __future__ import annotations

import pytest
from django.test import Client

from fleet.accounts.apikeys import create_api_key
from fleet.accounts.models import AuditEvent
from fleet.hub.models import HubModel, InstallState, ModelVersion, NodeInstall, SyncState
from fleet.inventory.models import NodeStatus
from fleet.rollouts import driver, services
from fleet.rollouts.api import api
from fleet.rollouts.models import Rollout
from tests.rollouts.test_services import run_to_end

SOAK_ONLY = {"healthcheck": None, "min_ready_seconds": 5}


@pytest.fixture(autouse=True)
def _fresh_driver(monkeypatch):
    monkeypatch.setattr(driver, "_restarted", True)


@pytest.fixture
def deployment(db, make_node, alice):
    model = HubModel.objects.create(repo_id="acme/tiny")
    v1 = ModelVersion.objects.create(model=model, revision="v1", sha="a" * 40, sync_state=SyncState.SYNCED)
    ModelVersion.objects.create(model=model, revision="v2", sha="b" * 40, sync_state=SyncState.SYNCED)
    ModelVersion.objects.create(model=model, revision="v3", sha="c" * 40, approval="pending")
    for name in ("gpu-01", "gpu-02", "gpu-03"):
        node, _ = make_node(name, labels={"role": "chat"}, status=NodeStatus.ONLINE)
        NodeInstall.objects.create(node=node, repo="acme/tiny", sha=v1.sha, version=v1, state=InstallState.ACTIVE)
    return services.create_deployment(alice, "chat-default", "acme/tiny", "v1", selector={"role": "chat"})


def bearer(user, scopes=("rollouts",)) -> Client:
    _, key = create_api_key(user, user, list(scopes))
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def session(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post(client: Client, url: str, body: dict | None = None):
    return client.post(url, body or {}, content_type="application/json")


def test_the_schema_is_served_to_callers_of_the_api(deployment, charlie, outsider) -> None:
    assert Client().get("/api/schema/").status_code == 401
    assert session(outsider).get("/api/schema/").status_code == 403
    for client in (session(charlie), bearer(charlie)):
        response = client.get("/api/schema/")
        assert response.status_code == 200
        paths = response.json()["paths"]
    assert {"/api/deployments/", "/api/versions/", "/api/rollouts/", "/api/rollouts/{rollout_id}/",
            "/api/rollouts/{rollout_id}/abort/"} <= set(paths)
    assert set(paths["/api/deployments/"]) == {"get", "post"}


def test_every_operation_requires_authentication() -> None:
    operations = [op for router in api._get_bound_routers() for view in router.path_operations.values()
                  for op in view.operations]
    assert len(operations) >= 10
    assert all(op.auth_callbacks for op in operations)


def test_viewers_read_deployments_versions_and_rollouts(deployment, charlie, bob) -> None:
    client = bearer(charlie)
    [listed] = client.get("/api/deployments/").json()
    assert listed["name"] == "chat-default" and listed["repo"] == "acme/tiny"
    assert listed["version"] == {"sha": "a" * 40, "revision": "v1"}
    assert [(n["name"], n["serving"]["revision"], n["in_sync"]) for n in listed["nodes"]] == [
        ("gpu-01", "v1", True), ("gpu-02", "v1", True), ("gpu-03", "v1", True)]
    assert listed["rollout"] is None

    versions = client.get("/api/versions/", {"repo": "acme/tiny"}).json()
    assert {(v["revision"], v["synced"], v["approved"]) for v in versions} == {
        ("v1", True, True), ("v2", True, True), ("v3", False, False)}
    missing = client.get("/api/versions/", {"repo": "acme/none"})
    assert missing.status_code == 404 and missing.json()["field"] == "repo"
    assert client.get("/api/versions/").json()["field"] == "repo"

    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    body = client.get(f"/api/rollouts/{rollout.pk}/").json()
    assert body["id"] == rollout.pk and body["state"] == "progressing" and body["reason"] == ""
    assert sorted(t["node"] for t in body["targets"]) == ["gpu-01", "gpu-02", "gpu-03"]
    assert {t["state"] for t in body["targets"]} == {"scheduled"} and all(t["error"] == "" for t in body["targets"])
    assert body["events"][-1]["to_state"] == "pending" and body["events"][-1]["by"] == "bob"
    assert client.get("/api/deployments/").json()[0]["rollout"]["id"] == rollout.pk
    assert client.get("/api/rollouts/999999/").status_code == 404


def test_viewers_and_keys_without_the_scope_cannot_act(deployment, charlie, bob, outsider) -> None:
    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    viewer = bearer(charlie)
    assert post(viewer, "/api/rollouts/", {"deployment": "chat-default", "version": "v2"}).status_code == 403
    for action in ("pause", "abort", "rollback"):
        response = post(viewer, f"/api/rollouts/{rollout.pk}/{action}/")
        assert response.status_code == 403 and "operator" in response.json()["error"]
    assert post(session(charlie), "/api/deployments/", {"name": "x", "repo": "acme/tiny",
                                                         "version": "v1"}).status_code == 403
    assert bearer(bob, ["chat"]).get("/api/deployments/").status_code == 401
    assert post(bearer(bob, ["chat", "hub"]), f"/api/rollouts/{rollout.pk}/abort/").status_code == 401
    assert Client(HTTP_AUTHORIZATION="Bearer fak_nonsense").get("/api/deployments/").status_code == 401
    assert Client().get("/api/deployments/").status_code == 401
    assert session(outsider).get("/api/deployments/").status_code == 403
    rollout.refresh_from_db()
    assert rollout.state == "progressing"


def test_sessions_need_the_csrf_token_to_change_anything(deployment, bob) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    assert client.get("/api/deployments/").status_code == 200
    body = {"deployment": "chat-default", "version": "v2", "strategy": SOAK_ONLY}
    assert post(client, "/api/rollouts/", body).status_code == 403
    assert not Rollout.objects.exists()
    client.get("/")  # sets the CSRF cookie as any page does
    token = client.cookies["csrftoken"].value
    response = client.post("/api/rollouts/", body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, response.content


def test_bad_input_gets_400_naming_the_field(deployment, bob) -> None:
    client = bearer(bob)
    for body, field in [
        ({"deployment": "chat-default"}, "version"),
        ({"deployment": "chat-default", "version": "v2", "strategy": {"batch": 0}}, "strategy.batch"),
        ({"deployment": "chat-default", "version": "v2", "strategy": {"surge": 2}}, "strategy.surge"),
        ({"deployment": "chat-default", "version": "v3"}, "version"),  # not approved
        ({"deployment": "chat-default", "version": "v1"}, "version"),  # already served
        ({"deployment": "chat-default", "version": "v9"}, "version"),
        ({"deployment": "chat-default", "version": "v2", "strategy": "fast"}, "strategy"),
    ]:
        response = post(client, "/api/rollouts/", body)
        assert response.status_code == 400, (body, response.content)
        assert response.json()["field"] == field, (body, response.json())
        assert response.json()["error"]
    response = post(client, "/api/rollouts/", {"deployment": "nope", "version": "v2"})
    assert response.status_code == 404 and response.json()["field"] == "deployment"
    response = client.post("/api/rollouts/", "{not json", content_type="application/json")
    assert response.status_code == 400
    response = post(client, "/api/deployments/", {"name": "Bad Name", "repo": "acme/tiny", "version": "v1",
                                                  "nodes": ["gpu-01"]})
    assert response.status_code == 400 and response.json()["field"] == "name"
    assert not Rollout.objects.exists()


def test_operators_roll_out_pause_resume_and_roll_back_through_the_api(deployment, bob) -> None:
    client = bearer(bob)
    response = post(client, "/api/deployments/", {"name": "edge", "repo": "acme/tiny", "version": "v1",
                                                  "nodes": ["gpu-03"]})
    assert response.status_code == 201
    assert response.json()["name"] == "edge" and [n["name"] for n in response.json()["nodes"]] == ["gpu-03"]

    response = post(client, "/api/rollouts/", {"deployment": "chat-default", "version": "b" * 8,
                                               "strategy": SOAK_ONLY})
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["state"] == "progressing" and created["to_version"]["revision"] == "v2"
    rollout_id = created["id"]

    assert post(client, f"/api/rollouts/{rollout_id}/pause/", {"reason": "lunch"}).json()["state"] == "paused"
    assert post(client, f"/api/rollouts/{rollout_id}/pause/").json()["state"] == "paused"  # already: no-op
    assert post(client, f"/api/rollouts/{rollout_id}/resume/").json()["state"] == "progressing"

    rollout = run_to_end(Rollout.objects.get(pk=rollout_id))
    assert rollout.state == "succeeded"
    body = client.get(f"/api/rollouts/{rollout_id}/").json()
    assert {t["state"] for t in body["targets"]} == {"committed"}
    listed = {d["name"]: d for d in client.get("/api/deployments/").json()}
    assert listed["chat-default"]["version"]["revision"] == "v2"

    late = post(client, f"/api/rollouts/{rollout_id}/pause/")
    assert late.status_code == 409 and late.json()["field"] == "action"
    back = post(client, f"/api/rollouts/{rollout_id}/rollback/")
    assert back.status_code == 200 and back.json()["id"] != rollout_id
    assert back.json()["to_version"]["revision"] == "v1"
    actions = set(AuditEvent.objects.filter(actor__username="bob").values_list("action", flat=True))
    assert {"deployment.create", "rollout.create", "rollout.pause", "rollout.resume", "rollout.rollback"} <= actions


def test_an_aborted_rollout_leaves_the_deployment_on_its_old_version(deployment, bob) -> None:
    client = bearer(bob)
    rollout_id = post(client, "/api/rollouts/", {"deployment": "chat-default", "version": "v2",
                                                 "strategy": SOAK_ONLY}).json()["id"]
    response = post(client, f"/api/rollouts/{rollout_id}/abort/", {"reason": "wrong version"})
    assert response.status_code == 200
    run_to_end(Rollout.objects.get(pk=rollout_id))
    body = client.get(f"/api/rollouts/{rollout_id}/").json()
    assert body["state"] == "aborted" and "wrong version" in body["reason"]
    [listed] = [d for d in client.get("/api/deployments/").json() if d["name"] == "chat-default"]
    assert listed["version"]["revision"] == "v1" and listed["rollout"]["state"] == "aborted"
    assert AuditEvent.objects.filter(action="rollout.abort", actor__username="bob").exists()


def test_targets_report_their_download_progress(deployment, bob, charlie) -> None:
    from fleet.agent.protocol import CommandEvent
    from fleet.hub import commands as hub_commands
    from fleet.hub.models import NodeCommand

    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    command = NodeCommand.objects.select_related("node").get(node__name="gpu-02", kind="deploy")
    hub_commands.record_event(command.node_id, CommandEvent(type="event", command_id=command.command_id,
                                                            state="downloading", bytes_done=512, bytes_total=2048,
                                                            bytes_per_second=3 * 1024**3))
    driver.tick()
    targets = {t["node"]: t for t in bearer(charlie).get(f"/api/rollouts/{rollout.pk}/").json()["targets"]}
    assert (targets["gpu-02"]["state"], targets["gpu-02"]["bytes_done"], targets["gpu-02"]["bytes_total"],
            targets["gpu-02"]["bytes_per_second"]) == ("downloading", 512, 2048, 3 * 1024**3)
    page = session(charlie).get(f"/rollouts/{rollout.pk}/").content.decode()
    assert "512 B / 2.0 KiB" in page and "3.0 GiB/s" in page

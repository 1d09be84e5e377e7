"""Enrollment over HTTP: a one-time token for a node secret; expired, used-up, wrong and revoked tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.accounts.models import AuditEvent
from fleet.inventory.models import EnrollmentToken, Node, NodeCredential
from fleet.inventory.services import authenticate_node, create_enrollment_token, revoke_enrollment_token
from fleet.lib.secrets import hash_secret

pytestmark = pytest.mark.django_db
URL = "/api/agents/enroll"


def post(client, body, **headers):
    return client.post(URL, body, content_type="application/json", **headers)


@pytest.fixture
def token(bob):
    _, plaintext = create_enrollment_token(bob, ttl=timedelta(hours=1), uses=1)
    return plaintext


def test_valid_token_gives_a_node_and_a_secret_stored_only_as_hash(client, token):
    response = post(client, {"token": token, "hostname": "gpu-07.lan", "kind": "gpu_server", "labels": {"zone": "a"}})
    assert response.status_code == 201, response.content
    body = response.json()
    node = Node.objects.get(pk=body["node_id"])
    assert (node.name, node.labels, body["node_name"]) == ("gpu-07", {"zone": "a"}, "gpu-07")
    credential = NodeCredential.objects.get(node=node)
    assert credential.secret_hash == hash_secret(body["secret"]) != body["secret"]
    assert authenticate_node(body["secret"]).node_id == node.pk
    assert EnrollmentToken.objects.get().uses_left == 0
    assert AuditEvent.objects.filter(action="node.enroll", target_id=str(node.pk)).exists()


def test_used_up_token_is_refused(client, token):
    assert post(client, {"token": token, "hostname": "a"}).status_code == 201
    response = post(client, {"token": token, "hostname": "b"})
    assert response.status_code == 410
    assert response.json() == {"error": "this enrollment token is used up; ask for a new one", "field": "token"}
    assert Node.objects.count() == 1


def test_multi_use_token_counts_down(client, bob):
    _, plaintext = create_enrollment_token(bob, ttl=timedelta(hours=1), uses=3)
    codes = [post(client, {"token": plaintext, "hostname": f"edge-{i}"}).status_code for i in range(4)]
    assert codes == [201, 201, 201, 410]


def test_expired_token_is_refused(client, token):
    EnrollmentToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post(client, {"token": token, "hostname": "gpu-07"})
    assert response.status_code == 410
    assert "expired" in response.json()["error"]
    assert not Node.objects.exists()


def test_wrong_token_is_refused(client, token):
    response = post(client, {"token": token + "x", "hostname": "gpu-07"})
    assert response.status_code == 403
    assert response.json()["field"] == "token"
    assert EnrollmentToken.objects.get().uses_left == 1


def test_revoked_token_is_refused(client, bob, token):
    revoke_enrollment_token(bob, EnrollmentToken.objects.get())
    assert post(client, {"token": token, "hostname": "gpu-07"}).status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hostname": "x"}, "token"),
        ({"token": "t"}, "hostname"),
        ({"token": "t", "hostname": "x", "name": "bad name!"}, "name"),
        ({"token": "t", "hostname": "x", "kind": "mainframe"}, "kind"),
        ({"token": "t", "hostname": "x", "labels": {"Bad Key": "v"}}, "labels"),
        ({"token": "t", "hostname": "x", "labels": ["a"]}, "labels"),
        ([1, 2], "body"),
    ],
)
def test_bad_bodies_name_the_field(client, body, field):
    response = post(client, body)
    assert response.status_code == 400
    assert response.json()["field"] == field


def test_not_json_is_a_clear_400(client):
    response = client.post(URL, "token=abc", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.json()["field"] == "body"


def test_duplicate_name_is_a_conflict_and_keeps_the_token_use(client, bob, token):
    Node.objects.create(name="gpu-07")
    response = post(client, {"token": token, "hostname": "gpu-07"})
    assert response.status_code == 409
    assert response.json()["field"] == "name"
    assert EnrollmentToken.objects.get().uses_left == 1  # the failed enrollment rolled back the use


def test_rotate_replaces_the_secret(client, token):
    secret = post(client, {"token": token, "hostname": "gpu-07"}).json()["secret"]
    response = client.post("/api/agents/rotate", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    new = response.json()["secret"]
    assert authenticate_node(secret) is None
    assert authenticate_node(new) is not None
    assert client.post("/api/agents/rotate", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_enrollment_token_command_prints_only_the_token(capsys):
    from django.core.management import call_command

    call_command("createenrollmenttoken", "--expires", "2h", "--uses", "3")
    printed = capsys.readouterr().out.strip()
    token = EnrollmentToken.objects.get()
    assert token.token_hash == hash_secret(printed)
    assert token.uses_left == 3
    assert timedelta(minutes=119) < token.expires_at - timezone.now() <= timedelta(hours=2)


def test_enrollment_token_command_rejects_bad_expiry():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--expires"):
        call_command("createenrollmenttoken", "--expires", "soon")

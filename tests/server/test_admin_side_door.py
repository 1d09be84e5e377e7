"""The Django admin is a view, not a side door: credentials, enrollment tokens, API keys and the audit log
cannot be edited or deleted there; revoking and deleting go through the audited services."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from fleet.accounts.models import AuditEvent
from fleet.inventory.models import EnrollmentToken, Node, NodeCredential
from fleet.inventory.services import create_enrollment_token, revoke_credential

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client: Client, alice) -> Client:
    client.force_login(alice)
    return client


def _change_form(model: str, pk: int) -> str:
    return f"/admin/{model}/{pk}/change/"


def test_an_admin_cannot_unrevoke_a_credential(admin_client, alice, make_node) -> None:
    node, _ = make_node()
    credential = node.credentials.get()
    revoke_credential(alice, credential)
    response = admin_client.post(_change_form("inventory/nodecredential", credential.pk),
                                 {"node": node.pk, "hint": credential.hint, "revoked_at_0": "", "revoked_at_1": ""})
    assert response.status_code == 403
    credential.refresh_from_db()
    assert credential.revoked_at is not None
    page = admin_client.get(_change_form("inventory/nodecredential", credential.pk)).content.decode()
    assert credential.secret_hash not in page  # viewable, without the hash


def test_an_admin_cannot_edit_token_expiry_or_uses(admin_client, alice) -> None:
    token, _ = create_enrollment_token(alice, ttl=timedelta(hours=1), uses=1)
    expires = token.expires_at
    response = admin_client.post(_change_form("inventory/enrollmenttoken", token.pk), {
        "note": "", "expires_at_0": "2099-01-01", "expires_at_1": "00:00:00", "uses_left": "1000"})
    assert response.status_code == 403
    token.refresh_from_db()
    assert token.expires_at == expires and token.uses_left == 1
    assert admin_client.post(f"/admin/inventory/enrollmenttoken/{token.pk}/delete/", {"post": "yes"}).status_code == 403
    assert EnrollmentToken.objects.filter(pk=token.pk).exists()


def test_an_admin_cannot_delete_audit_events(admin_client, alice) -> None:
    create_enrollment_token(alice, ttl=timedelta(hours=1), uses=1)
    event = AuditEvent.objects.get(action="enrollment_token.create")
    assert admin_client.post(f"/admin/accounts/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = admin_client.post("/admin/accounts/auditevent/", {
        "action": "delete_selected", "_selected_action": [event.pk], "post": "yes"})
    assert bulk.status_code in (200, 302)
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert admin_client.get("/admin/accounts/auditevent/").status_code == 200  # still readable


def test_revoking_in_the_admin_goes_through_the_audited_service(admin_client, make_node) -> None:
    node, _ = make_node()
    credential = node.credentials.get()
    response = admin_client.post("/admin/inventory/nodecredential/", {
        "action": "revoke", "_selected_action": [credential.pk]})
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.revoked_at is not None and credential.revoked_at <= timezone.now()
    assert AuditEvent.objects.filter(action="node_credential.revoke", actor_name="alice").exists()
    assert Node.objects.get(pk=node.pk).status == "revoked"


def test_deleting_a_node_in_the_admin_is_audited_and_forgets_its_telemetry(admin_client, make_node,
                                                                             django_capture_on_commit_callbacks
                                                                             ) -> None:
    from fleet.telemetry.live import live_telemetry

    node, _ = make_node()
    live_telemetry.node(node.pk)  # the node had sent telemetry: it is in the live window
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/inventory/node/{node.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Node.objects.filter(pk=node.pk).exists()
    assert not NodeCredential.objects.filter(node_id=node.pk).exists()
    assert AuditEvent.objects.filter(action="node.delete", actor_name="alice", target_repr=node.name).exists()
    assert node.pk not in live_telemetry.nodes

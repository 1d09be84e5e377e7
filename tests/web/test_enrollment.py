"""Enrollment tokens and node credentials from the web: create (shown once), revoke, audit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.accounts.models import AuditEvent
from fleet.inventory.models import EnrollmentToken, NodeStatus
from fleet.inventory.services import create_enrollment_token
from fleet.lib.secrets import hash_secret


@pytest.mark.django_db
def test_viewer_cannot_create_tokens(client: Client, charlie) -> None:
    client.force_login(charlie)
    response = client.post(reverse("enrollment"), {"expires": "1h", "uses": 1, "note": "x"})
    assert response.status_code == 403
    assert not EnrollmentToken.objects.exists()
    assert not AuditEvent.objects.exclude(action="user.login").exists()  # force_login is a sign-in


@pytest.mark.django_db
def test_operator_creates_token_shown_once_and_stored_hashed(client: Client, bob) -> None:
    client.force_login(bob)
    before = timezone.now()
    response = client.post(reverse("enrollment"), {"expires": "24h", "uses": 3, "note": "rack 4"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = EnrollmentToken.objects.get()
    plaintext = response.context["new_token"]
    page = response.content.decode()

    assert plaintext.startswith("fet_") and plaintext in page
    assert f"fleet-agent enroll --server http://testserver --token {plaintext}" in page
    assert token.token_hash == hash_secret(plaintext)
    assert plaintext not in token.token_hash and plaintext not in token.hint
    assert (token.uses_total, token.uses_left, token.note, token.created_by) == (3, 3, "rack 4", bob)
    assert timedelta(hours=23, minutes=59) < token.expires_at - before <= timedelta(hours=24, seconds=5)
    # Never kept anywhere the server could show it again: not the session, not a cookie.
    assert plaintext not in str(dict(client.session.items()))
    assert all(plaintext not in morsel.value for morsel in response.cookies.values())
    event = AuditEvent.objects.get(action="enrollment_token.create")
    assert event.actor == bob and event.target_id == str(token.pk)
    # Shown once: the next visit lists the token by its hint only.
    again = client.get(reverse("enrollment")).content.decode()
    assert plaintext not in again and token.hint in again


@pytest.mark.django_db
def test_command_uses_public_url_when_set(client: Client, bob, settings) -> None:
    settings.FLEET_PUBLIC_URL = "https://fleet.example.com"
    client.force_login(bob)
    response = client.post(reverse("enrollment"), {"expires": "15m", "uses": 1})
    plaintext = response.context["new_token"]
    command = f"fleet-agent enroll --server https://fleet.example.com --token {plaintext}"
    assert command in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"expires": "1h", "uses": 0}, "uses"),
        ({"expires": "1h", "uses": 1001}, "uses"),
        ({"expires": "1h", "uses": "many"}, "uses"),
        ({"expires": "99y", "uses": 1}, "expires"),
        ({"expires": "1h", "uses": 1, "note": "n" * 201}, "note"),
    ],
)
def test_bad_token_form_names_the_field_and_creates_nothing(client: Client, bob, data, field) -> None:
    client.force_login(bob)
    response = client.post(reverse("enrollment"), data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert f'<span class="field-error">{field}: ' in response.content.decode()
    assert response.context["new_token"] is None
    assert not EnrollmentToken.objects.exists()


@pytest.mark.django_db
def test_token_list_shows_states(client: Client, bob) -> None:
    active, _ = create_enrollment_token(bob, ttl=timedelta(hours=1), note="fresh")
    expired, _ = create_enrollment_token(bob, ttl=timedelta(hours=1), note="old")
    EnrollmentToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    used, _ = create_enrollment_token(bob, ttl=timedelta(hours=1), note="spent")
    EnrollmentToken.objects.filter(pk=used.pk).update(uses_left=0)
    client.force_login(bob)
    page = client.get(reverse("enrollment")).content.decode()
    for token, state in [(active, "active"), (expired, "expired"), (used, "used")]:
        row = page[page.index(f'data-token-id="{token.pk}"'):]
        row = row[: row.index("</tr>")]
        assert f"data-token-state>{state}<" in row
        assert ("Revoke" in row) == (state == "active")


@pytest.mark.django_db
def test_operator_revokes_token_with_audit(client: Client, bob, charlie) -> None:
    token, _ = create_enrollment_token(bob, ttl=timedelta(hours=1))
    url = reverse("token-revoke", args=[token.pk])
    client.force_login(charlie)
    assert client.post(url).status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is None

    client.force_login(bob)
    assert client.get(url).status_code == 405  # POST only
    response = client.post(url, follow=True)
    assert response.redirect_chain[-1][0] == reverse("enrollment")
    token.refresh_from_db()
    assert token.state == "revoked"
    assert "revoked" in response.content.decode()
    event = AuditEvent.objects.get(action="enrollment_token.revoke")
    assert event.actor == bob and event.target_id == str(token.pk)
    # Revoking twice is harmless and says so.
    again = client.post(url, follow=True).content.decode()
    assert "already revoked" in again
    assert AuditEvent.objects.filter(action="enrollment_token.revoke").count() == 1


@pytest.mark.django_db
def test_operator_revokes_credential_with_audit(client: Client, bob, web_node, web_credential) -> None:
    node = web_node("gpu-01", status=NodeStatus.ONLINE)
    credential = web_credential(node)
    client.force_login(bob)
    detail = reverse("node-detail", args=[node.pk])
    page = client.get(detail).content.decode()
    assert reverse("credential-revoke", args=[credential.pk]) in page

    response = client.post(reverse("credential-revoke", args=[credential.pk]), {"next": detail})
    assert response.status_code == 302 and response["Location"] == detail
    credential.refresh_from_db()
    node.refresh_from_db()
    assert credential.revoked_at is not None
    assert node.status == NodeStatus.REVOKED  # no active secret left
    event = AuditEvent.objects.get(action="node_credential.revoke")
    assert event.actor == bob and event.target_id == str(node.pk)


@pytest.mark.django_db
def test_revoke_ignores_foreign_next_url(client: Client, bob, web_node, web_credential) -> None:
    credential = web_credential(web_node("gpu-01"))
    client.force_login(bob)
    response = client.post(reverse("credential-revoke", args=[credential.pk]), {"next": "https://evil.example/"})
    assert response["Location"] == reverse("enrollment")


@pytest.mark.django_db
def test_viewer_cannot_revoke_credentials_nor_see_them(
    client: Client, charlie, web_node, web_credential
) -> None:
    node = web_node("gpu-01")
    credential = web_credential(node)
    client.force_login(charlie)
    page = client.get(reverse("node-detail", args=[node.pk])).content.decode()
    assert credential.hint not in page and "credential-revoke" not in page
    assert client.post(reverse("credential-revoke", args=[credential.pk])).status_code == 403
    credential.refresh_from_db()
    assert credential.revoked_at is None


@pytest.mark.django_db
def test_enrollment_page_lists_credentials(client: Client, bob, web_node, web_credential) -> None:
    credential = web_credential(web_node("edge-7"))
    client.force_login(bob)
    page = client.get(reverse("enrollment")).content.decode()
    assert "edge-7" in page and credential.hint in page

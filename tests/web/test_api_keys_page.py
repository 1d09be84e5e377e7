"""The API keys page: admins manage every key, operators their own; plaintext shown once; audited."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.accounts.apikeys import authenticate_api_key, create_api_key
from fleet.accounts.models import ApiKey, AuditEvent
from fleet.lib.secrets import hash_secret

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admin_creates_a_chat_key_for_a_user_with_expiry_and_models(alice, bob):
    response = logged_in(alice).post(reverse("api-keys"), {
        "name": "chat-app", "owner": bob.pk, "scopes": ["chat", "rollouts"], "expires": "30",
        "allowed_models": "org/model-a\n\norg/model-b\n"})
    assert response.status_code == 200
    page = response.content.decode()
    plaintext = re.search(r'id="new-key"[^>]*value="(fak_[^"]+)"', page).group(1)
    key = ApiKey.objects.get()
    assert (key.user, key.scopes, key.allowed_models) == (bob, ["chat", "rollouts"], ["org/model-a", "org/model-b"])
    assert key.key_hash == hash_secret(plaintext) and timedelta(days=29) < key.expires_at - timezone.now()
    assert authenticate_api_key(plaintext, "chat").pk == key.pk
    assert response["Cache-Control"].startswith("max-age=0")
    assert AuditEvent.objects.filter(action="api_key.create", details__allowed_models=["org/model-a",
                                                                                       "org/model-b"]).exists()
    again = logged_in(alice).get(reverse("api-keys")).content.decode()
    assert plaintext not in again and key.hint in again  # shown once


def test_bad_input_names_the_field_and_creates_nothing(alice):
    response = logged_in(alice).post(reverse("api-keys"), {"owner": alice.pk, "scopes": [],
                                                           "allowed_models": "not a model!"})
    page = response.content.decode()
    assert "scopes: pick at least one scope" in page and "allowed_models: &#x27;not a model!&#x27;" in page
    assert not ApiKey.objects.exists()


def test_operator_manages_only_their_own_keys(alice, bob):
    others, _ = create_api_key(alice, alice, ["metrics"], "alice-key")
    client = logged_in(bob)
    page = client.get(reverse("api-keys")).content.decode()
    assert "alice-key" not in page and 'name="owner"' not in page
    client.post(reverse("api-keys"), {"name": "mine", "owner": alice.pk, "scopes": ["chat"]})
    mine = ApiKey.objects.get(name="mine")
    assert mine.user == bob  # an operator cannot make keys for someone else
    assert client.post(reverse("api-key-revoke", args=[others.pk])).status_code == 404
    assert client.post(reverse("api-key-revoke", args=[mine.pk])).status_code == 302
    mine.refresh_from_db()
    assert mine.revoked_at is not None and AuditEvent.objects.filter(action="api_key.revoke").count() == 1


def test_viewers_and_outsiders_are_refused(charlie, outsider):
    for user in (charlie, outsider):
        assert logged_in(user).get(reverse("api-keys")).status_code == 403
    assert Client().get(reverse("api-keys")).status_code == 302


def test_nav_links_the_page_for_operators(bob, charlie):
    assert 'href="/api-keys/"' in logged_in(bob).get(reverse("overview")).content.decode()
    assert 'href="/api-keys/"' not in logged_in(charlie).get(reverse("overview")).content.decode()


def test_createapikey_chat_scope_with_expiry_and_models(bob, capsys):
    call_command("createapikey", "--user", "bob", "--scope", "chat", "--expires", "7d", "--model", "org/a")
    plaintext = capsys.readouterr().out.strip()
    key = authenticate_api_key(plaintext, "chat")
    assert key.allowed_models == ["org/a"] and key.expires_at > timezone.now() + timedelta(days=6)
    with pytest.raises(CommandError, match="--expires: 'soon' is not a duration"):
        call_command("createapikey", "--user", "bob", "--scope", "chat", "--expires", "soon")
    with pytest.raises(CommandError, match="--model: 'bad model' is not a model name"):
        call_command("createapikey", "--user", "bob", "--scope", "chat", "--model", "bad model")

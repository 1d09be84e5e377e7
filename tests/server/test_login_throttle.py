"""Sign-in throttling: after FLEET_LOGIN_FAILURE_LIMIT wrong passwords for one user from one address, that
pair is locked out with a clear page, even with the right password; other users and addresses are not."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _sign_in(client: Client, username: str, password: str, address: str = "192.0.2.10", **headers):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address,
                       **headers)


def test_lockout_after_repeated_failures_with_a_clear_message(client: Client, bob, charlie, settings) -> None:
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == 5
    for _ in range(limit - 1):
        response = _sign_in(client, "bob", "wrong-password")
        assert response.status_code == 200 and "Please enter a correct username" in response.content.decode()
    locked = _sign_in(client, "bob", "wrong-password")
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Too many failed sign-ins" in page and "for <strong>bob</strong>" in page and "15 minutes" in page
    assert "axes_reset_username bob" in page

    right = _sign_in(client, "bob", PASSWORD)  # the right password does not get through a lockout
    assert right.status_code == 429 and "_auth_user_id" not in client.session
    assert _sign_in(Client(), "charlie", PASSWORD).status_code == 302  # another user is not affected
    assert _sign_in(Client(), "bob", PASSWORD, address="198.51.100.7").status_code == 302  # nor another address


def test_a_forged_forwarded_for_does_not_dodge_the_lockout(client: Client, bob, settings) -> None:
    for n in range(settings.AXES_FAILURE_LIMIT):
        response = _sign_in(client, "bob", "wrong-password", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")
    assert response.status_code == 429


def test_a_success_resets_the_count(client: Client, bob, settings) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _sign_in(client, "bob", "wrong-password")
    assert _sign_in(client, "bob", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _sign_in(client, "bob", "wrong-password").status_code == 200
